"""The norms around a block's attention and MLP, found by what they feed, and the values they give.

In the probe forward, a norm that is a direct child of a block is recognised by
tensor identity: the one whose output *is* the attention's (or the MLP's) input is
that sub-block's pre-norm; the one whose input *is* the attention's (or the MLP's)
output is its post-norm (Gemma 2/3, OLMo 2 "sandwich" blocks). From them come:

- ``residual_mid[i]``: the residual stream between the attention and the MLP, the
  input of the MLP's pre-norm (where that is not the layer's input: parallel
  blocks have no such value);
- ``attentions_output_normed[i]`` / ``mlps_output_normed[i]``: a sub-block's output
  after its post-norm, which is what the block adds to the residual stream.
"""

from __future__ import annotations

from typing import Any

from ._paths import join
from ._rules import NORM_CLASS

__all__ = ["NORM_SITES", "block_norms", "norm_roles"]

#: Per-layer values the norms give, in forward order.
NORM_SITES: tuple[str, ...] = ("attentions_output_normed", "residual_mid", "mlps_output_normed")


def block_norms(block: Any, taken: set[str]) -> list[str]:
    """Direct children of ``block`` that are norms (not the attention or the MLP themselves)."""
    return [
        name
        for name, child in block.named_children()
        if name not in taken and NORM_CLASS.search(type(child).__name__)
    ]


def _where(loc: Any) -> tuple[str, Any]:
    if loc.io == "input":
        return ("arg", loc.key) if isinstance(loc.key, int) else ("kwarg", loc.key)
    return ("out", loc.key)


def norm_roles(base: str, norms: list[str], seen: dict[str, Any], locators: dict[str, Any]) -> dict[str, str]:
    """Which norm (path relative to the block) plays which role, by tensor identity in the probe forward."""
    targets = {}
    for role, site in (
        ("attention_norm", "attentions_input"),
        ("mlp_norm", "mlps_input"),
        ("attention_post_norm", "attentions_output"),
        ("mlp_post_norm", "mlps_output"),
        ("layer_input", "layers_input"),
    ):
        loc = locators.get(site)
        record = seen.get(loc.path) if loc is not None else None
        if record is not None:
            targets[role] = record.tensor(_where(loc))
    roles: dict[str, str] = {}
    for rel in norms:
        record = seen.get(join(base, rel))
        if record is None or record.calls != 1:
            continue
        out = record.tensor(("out", None))
        inp = record.tensor(("arg", 0)) if record.args else record.tensor(("kwarg", "hidden_states"))
        for role in ("attention_norm", "mlp_norm"):
            if out is not None and targets.get(role) is out:
                roles[role] = rel
        for role in ("attention_post_norm", "mlp_post_norm"):
            if inp is not None and targets.get(role) is inp:
                roles[role] = rel
        if "mlp_norm" in roles and roles["mlp_norm"] == rel and inp is not None:
            roles["mlp_reads_layer_input"] = "yes" if targets.get("layer_input") is inp else "no"
    return roles
