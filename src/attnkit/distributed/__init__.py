"""Context-parallel attention over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

* :func:`ring_attention`: the sequence sharded over the ranks; key/value shards travel the ring,
  partial results merge by their log-sum-exp; exact, forward and backward, for any mask.
* :func:`ulysses_attention`: all-to-all head parallelism (each rank attends the whole sequence
  for ``H / N`` heads).
* :func:`hybrid_attention`: all-to-all inside groups of ranks, the ring across them (2-D).
* :func:`context_parallel`: run :class:`attnkit.nn.MultiHeadAttention` and the transformer
  layers context-parallel without changing them.
* :func:`shard` / :func:`gather` / :class:`ShardLayout`: which positions each rank holds.

``docs/distributed.md`` has the commands, the measurements and a guide to choosing.
"""

from ._group import CommStats, RankFailedError, fail_fast, record_comm
from .launch import run_local
from .layout import ShardLayout, gather, global_positions, shard
from .module import context_parallel
from .ring import ring_attention
from .ulysses import hybrid_attention, hybrid_layout, make_2d_groups, ulysses_attention

__all__ = [
    "ring_attention",
    "context_parallel",
    "ulysses_attention",
    "hybrid_attention",
    "hybrid_layout",
    "make_2d_groups",
    "ShardLayout",
    "shard",
    "gather",
    "global_positions",
    "CommStats",
    "record_comm",
    "RankFailedError",
    "fail_fast",
    "run_local",
]
