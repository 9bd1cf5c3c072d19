# %% [markdown]
# # A tour of attnkit masks
# Masks are predicates over (batch, head, query, key), True = attend, combined with & | ~.
# Each renders densely for inspection and classifies tiles for block-skipping kernels.

# %%
from attnkit import masks

for name, m in {
    "causal": masks.causal(),
    "window(1)": masks.window(1),
    "dilated(1, 2)": masks.dilated(1, 2),
    "global [0] | window(1)": masks.global_tokens([0]) | masks.window(1),
}.items():
    print(name)
    print(masks.to_string(m.dense(6, 6)), "\n")

# %% [markdown]
# KV-cached decoding: 2 new queries over 5 keys, aligned bottom-right.

# %%
print(masks.to_string(masks.causal().dense(2, 5)))

# %% [markdown]
# Tile classification of a long causal sliding window: '#' full, '+' partial, '.' empty.

# %%
bm = (masks.causal() & masks.window(256, 0)).blocks(2048, 2048, 256)
print(bm)
print(bm.to_string())
