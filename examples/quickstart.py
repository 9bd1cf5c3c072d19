# %% [markdown]
# # attnkit quickstart
# One call, four steps: score every query-key pair, modify the scores, weight, combine.

# %%
import torch

import attnkit
from attnkit import masks

torch.manual_seed(0)
q = torch.randn(2, 8, 128, 64)  # (B, H, T, D)
k = torch.randn(2, 2, 128, 64)  # (B, Hkv, S, D): grouped-query attention, 4 query heads per kv head
v = torch.randn(2, 2, 128, 64)

# %% [markdown]
# A causal sliding window, with the last 28 keys of the second sequence padded away.

# %%
mask = masks.causal() & masks.window(32, 0) & masks.padding([128, 100])
out = attnkit.attention(q, k, v, mask)
print(out.shape)  # (2, 8, 128, 64)
print(attnkit.explain_dispatch(q, k, v, mask))

# %% [markdown]
# Any score and weight: here sparsemax over ALiBi-biased scores, with the weights returned.

# %%
out, w = attnkit.attention(q, k, v, masks.causal(), weight="sparsemax",
                           score_mods=[attnkit.scores.alibi(8)], return_weights=True)
print("fraction of exactly-zero weights:", (w == 0).float().mean().item())

# %% [markdown]
# Every implementation agrees with the reference.

# %%
ref = attnkit.attention(q, k, v, mask, impl="reference")
for name in attnkit.list_impls():
    spec = attnkit.get_impl(name)
    if spec.exact and not attnkit.not_supported_reasons(spec, attnkit.call.make_call(q, k, v, mask)):
        err = (attnkit.attention(q, k, v, mask, impl=name) - ref).abs().max().item()
        print(f"{name:<12} max |error| vs reference: {err:.1e}")
