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
# Every exact implementation agrees with the reference; one that cannot run the call refuses
# with its reasons (here sdpa, which has no sparsemax).

# %%
ref = attnkit.attention(q, k, v, mask, impl="reference")
for name in attnkit.list_impls():
    if not attnkit.get_impl(name).exact:
        continue
    try:
        err = (attnkit.attention(q, k, v, mask, impl=name) - ref).abs().max().item()
        print(f"{name:<12} max |error| vs reference: {err:.1e}")
    except attnkit.UnsupportedError as refusal:
        print(f"{name:<12} refused: {str(refusal).splitlines()[-1].strip()}")
try:
    attnkit.attention(q, k, v, mask, weight="sparsemax", impl="sdpa")
except attnkit.UnsupportedError as refusal:
    print(str(refusal).splitlines()[-1])

# %% [markdown]
# Choosing for a whole block: `use_impl` pins (or restricts) what `impl="auto"` picks, also inside
# `attnkit.nn` modules. The log-sum-exp of each row comes back with `return_lse=True`, and
# `merge_partials` merges attention over disjoint key sets exactly.

# %%
with attnkit.use_impl("blockwise"):
    out = attnkit.attention(q, k, v, mask)
print("pinned blockwise, max |error|:", (out - ref).abs().max().item())

out, lse = attnkit.attention(q, k, v, return_lse=True)  # lse: (B, H, T), float32
parts = [attnkit.attention(q, k[:, :, half], v[:, :, half], return_lse=True)
         for half in (slice(0, 64), slice(64, 128))]
merged, merged_lse = attnkit.merge_partials(parts)
print("two halves merged, max |error|:", (merged - out).abs().max().item())
