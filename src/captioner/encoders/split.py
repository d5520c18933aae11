"""An encoder cut in two before a stage: a frozen *bottom* (pixels → activations) and a *top*
(activations → pooled vector and region grid) that together compute what the whole encoder does.

Why: fine-tuning an encoder's last stages on a CPU. The bottom's output does not change while
the top trains, so it is extracted once, for the clean images and their augmented views, into
an activation cache (:mod:`captioner.data.activation_cache`), and a training step then runs
only the top and the decoder.

The cut is found, not written per family: the encoder's ``network`` (its ``features`` up to
the parts that need Python on tensor shapes) is traced with ``torch.fx`` (timm's untraceable
modules and functions kept whole), and the graph is cut before the first node that touches a
module of the stage. The halves are two ``GraphModule``s over the encoder's own modules, so
training the top trains the encoder's parameters, and saving the encoder saves them.

In the top, each convolution and the BatchNorm after it run as one convolution (``_ConvNorm``):
the encoder keeps its BatchNorm layers in eval mode (``Encoder.train``: ImageNet statistics, a
learnt scale and shift), so the norm is a per-channel affine map that folds into the
convolution's weights and bias at every call — the same function and gradients, without the
norm's forward and backward passes over the activations.

A cut is refused (:class:`EncoderSplitError`, naming the encoder and the stage) where the
trace fails (Python control flow on tensor values) or where more than one value crosses it
(a DenseNet's concatenated features; VGG's fc stage, which reads the pooled vector beside the
grid): the cache holds one array per image.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import InvalidInputError


class EncoderSplitError(InvalidInputError):
    """An encoder that cannot be cut where asked; the message names the stage and why."""


class _Network(nn.Module):
    """The traced root: ``encoder.network`` as a module's forward (paths ``encoder.<module>``)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor):
        return self.encoder.network(images)


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer with timm's untraceable modules and functions as leaves, and
    timm's ``DropPath`` kept whole, so stochastic depth follows the module's training mode at
    run time instead of being fixed at the mode it was traced in."""

    def __init__(self):
        from timm.layers import DropPath
        from timm.layers._fx import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self.leaves = (*get_notrace_modules(), DropPath)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self.leaves) or super().is_leaf_module(module, qualified_name)


class EncoderSplit:
    """``encoder`` cut before its stage ``stage``: ``bottom(pixels)`` gives the activations the
    stage reads, ``top(activations)`` the ``EncoderOutput`` the whole encoder would give.

    ``bottom_module`` is the bottom as a module (moved and put in eval mode by whoever
    extracts); ``top_module`` likewise. Both share the encoder's modules: build a split
    again after moving the encoder to another device or dtype (a traced constant buffer
    would stay behind).
    """

    def __init__(self, encoder: nn.Module, stage: int, bottom: fx.GraphModule, top: fx.GraphModule, image_size: int):
        self.name = encoder.name
        self.stage = stage
        self.stages = len(encoder.stage_members())
        self.image_size = image_size
        self.bottom_module = bottom
        self.top_module = top
        self._feature_map, self._output = encoder.feature_map, encoder.output

    def bottom(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (batch, 3, size, size) → the activations stage ``stage`` reads."""
        return self.bottom_module(pixels)

    def top(self, activations: torch.Tensor):
        """The bottom's activations → the encoder's ``EncoderOutput`` for those images."""
        pooled, output = self.top_module(activations)
        return self._output(pooled, self._feature_map(output, (self.image_size, self.image_size)))

    def key(self) -> dict:
        """What names the cut in a cache key: the stage it is made before, of how many."""
        return {"stage": self.stage, "stages": self.stages}


def _stage_of(root: nn.Module, node: fx.Node, stages: dict[int, int]) -> int | None:
    """The stage of the module a node calls or the parameter/buffer it reads (None: no module
    of any stage, or an operation on values)."""
    if node.op == "call_module":
        return stages.get(id(root.get_submodule(node.target)))
    if node.op == "get_attr":
        owner = node.target.rpartition(".")[0]
        return stages.get(id(root.get_submodule(owner)))
    return None


def _copy(nodes: list[fx.Node], inputs: dict[fx.Node, str], outputs, graph_nodes: list[fx.Node]) -> fx.Graph:
    """A graph of ``nodes`` (in order) whose placeholders stand for ``inputs`` and which returns
    ``outputs`` (a node, or None to copy the original output node); a parameter read the
    original graph made before the cut is read again here."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {node: graph.placeholder(name) for node, name in inputs.items()}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:  # a get_attr made on the other side of the cut
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    for node in nodes:
        if node.op == "output":
            continue
        env[node] = graph.node_copy(node, lookup)
    if outputs is None:
        graph.node_copy(graph_nodes[-1], lookup)
    else:
        graph.output(lookup(outputs))
    return graph


class _ConvNorm(nn.Module):
    """``norm(conv(x))`` as one convolution while ``norm`` (a BatchNorm, or timm's BatchNormAct,
    whose dropout and activation follow) uses its running statistics; the modules are the
    encoder's own, so their parameters train and save as before."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.norm = conv, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm = self.conv, self.norm
        if norm.training or norm.running_var is None:
            return norm(conv(x))
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        x = conv._conv_forward(x, conv.weight * scale.reshape(-1, 1, 1, 1), shift)
        return norm.act(norm.drop(x)) if hasattr(norm, "act") else x


def _fold_norms(module: fx.GraphModule) -> fx.GraphModule:
    """Each plain convolution whose one user is a BatchNorm, and that BatchNorm, as one
    ``_ConvNorm`` call in ``module``'s graph."""
    graph = module.graph
    for node in list(graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        norm, conv = module.get_submodule(node.target), module.get_submodule(source.target)
        if type(conv) is not nn.Conv2d or not isinstance(norm, nn.BatchNorm2d) or len(node.args) != 1 or node.kwargs:
            continue
        name = f"{source.target}_{node.target.rpartition('.')[2]}".replace(".", "_")
        module.add_submodule(name, _ConvNorm(conv, norm))
        with graph.inserting_before(node):
            folded = graph.call_module(name, source.args, source.kwargs)
        node.replace_all_uses_with(folded)
        graph.erase_node(node)
        graph.erase_node(source)
    graph.lint()
    module.recompile()
    return module


def _module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """``graph`` over ``root``'s modules, without the operations its output does not need."""
    module = fx.GraphModule(root, graph, name)
    module.graph.eliminate_dead_code()
    module.graph.lint()
    module.recompile()
    return module


def split_encoder(encoder: nn.Module, image_size: int, stage: int | None = None) -> EncoderSplit:
    """Cut ``encoder`` (an ``Encoder``) before ``stage`` (default: its first trainable stage) for inputs of
    ``image_size`` pixels a side. Raises :class:`EncoderSplitError` where it cannot."""
    groups = encoder.stage_members()
    if stage is None:
        if encoder.frozen:
            raise EncoderSplitError(f"{encoder.name}: no trainable stage to cut before (trainable_blocks is 0)")
        stage = len(groups) - encoder.config.trainable_blocks
    if not 0 < stage < len(groups):
        raise EncoderSplitError(
            f"{encoder.name}: cannot cut before stage {stage} of {len(groups)} (stages 1..{len(groups) - 1} have a "
            f"frozen part below them); with every stage trainable there is nothing to cache: read pixels "
            f"(data.cache_activations=false)"
        )
    stage_of_module = {id(module): index for index, group in enumerate(groups) for module in group}
    root = _Network(encoder)
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # noqa: BLE001  fx raises TraceError, TypeError, RuntimeError... on Python control flow
        raise EncoderSplitError(
            f"{encoder.name} cannot be cut into a cached bottom and a trainable top: torch.fx cannot trace it "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); read pixels (data.cache_activations=false)"
        ) from None
    nodes = list(graph.nodes)
    reached = [i for i, node in enumerate(nodes) if (_stage_of(root, node, stage_of_module) or 0) >= stage]  # stage ≥ 1
    cut = reached[0] if reached else None
    if cut is None:
        raise EncoderSplitError(f"{encoder.name}: its forward never reaches stage {stage}; read pixels "
                                f"(data.cache_activations=false)")
    below = set(nodes[:cut])
    crossing = list(dict.fromkeys(
        value for node in nodes[cut:] for value in node.all_input_nodes if value in below and value.op != "get_attr"
    ))
    if len(crossing) != 1 or crossing[0].op == "placeholder":
        what = ("the pixels themselves: nothing frozen runs before it" if crossing and crossing[0].op == "placeholder"
                else f"{len(crossing)} values ({', '.join(n.name for n in crossing[:4])})")
        raise EncoderSplitError(
            f"{encoder.name} cannot be cut before stage {stage}: {what} cross the cut, and the activation cache holds "
            f"one array per image; train fewer or more stages (trainable_blocks), or read pixels "
            f"(data.cache_activations=false)"
        )
    activations = crossing[0]
    bottom = _module(root, _copy(nodes[:cut], {}, activations, nodes), "EncoderBottom")
    top = _fold_norms(_module(root, _copy(nodes[cut:], {activations: "activations"}, None, nodes), "EncoderTop"))
    return EncoderSplit(encoder, stage, bottom, top, image_size)


__all__ = ["EncoderSplit", "EncoderSplitError", "split_encoder"]
