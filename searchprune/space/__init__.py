"""Channel groups from the dependency graph, analytic FLOPs/params, ratio -> width rounding."""

from searchprune.space._cost import Cost, CostModel, count_cost
from searchprune.space._groups import (
    ChannelGroup,
    Member,
    ParamMember,
    discover,
    discover_groups,
    is_depthwise,
    is_grouped,
)
from searchprune.space._space import SearchSpace, round_width

__all__ = [
    "ChannelGroup",
    "Cost",
    "CostModel",
    "Member",
    "ParamMember",
    "SearchSpace",
    "count_cost",
    "discover",
    "discover_groups",
    "is_depthwise",
    "is_grouped",
    "round_width",
]
