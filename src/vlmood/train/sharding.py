"""Training a backbone that is large for its memory: activation checkpointing and FSDP.

Both are :class:`~vlmood.train.engine.TrainConfig` settings that change how a run uses memory,
not what it computes (so neither is part of a run's identity: a run may resume with or without
them, and ``vlmood fit`` reuses an adapter trained either way):

- ``grad_checkpointing=True`` (:func:`enable_grad_checkpointing`): each transformer block (open_clip
  ``resblocks``, timm ``blocks``, Hugging Face encoder ``layer(s)``) keeps only its input for the
  backward pass and recomputes its activations there (non-reentrant
  :func:`torch.utils.checkpoint.checkpoint`, one block at a time, as open_clip's
  ``set_grad_checkpointing`` does). vlmood wraps each block's ``forward`` itself rather than
  setting the libraries' own switches: vlmood's open_clip image path runs the ``resblocks`` one by
  one (for patch features), which open_clip's switch in ``Transformer.forward`` never sees, and
  Hugging Face's switch acts only in training mode while fine-tuning keeps the backbone in eval
  mode (dropout off, BatchNorm statistics frozen). The wrappers sit on the block's ``forward``,
  inside its hooks (FSDP's all-gathers stay outside the recomputation), and are removed when the
  engine's ``fit`` returns, so nothing leaks into the model afterwards. Gradients equal the
  un-checkpointed ones.
- ``strategy="fsdp"`` (:class:`FSDPRun`), under torchrun: the module the engine trains is sharded
  with FSDP2 (``torch.distributed.fsdp.fully_shard``): one FSDP unit per block (found as above)
  and the rest (embeddings, projections, a head, the logit scale) in the root unit. Parameters,
  gradients and optimiser state are split over the ranks; each block's full parameters exist only
  while it runs. The engine shards a structural copy of its module whose parameters start as
  aliases of the caller's (FSDP copies each rank's shard out of them; nothing is duplicated), so
  the caller's module is never rewritten into DTensors. Checkpoints hold full tensors gathered
  from every rank and written by rank 0 (the same ``last.pt`` format as DDP and one process: a run
  may resume under another strategy or world size), and when training ends every rank writes the
  full trained tensors back into the caller's module, so methods and adapters see plain tensors
  exactly as after a DDP run. Gradients are averaged over the ranks as DDP does, so a W-rank FSDP
  run takes the same steps as the 1-process run at the same global batch (up to float summation
  order). The loss must reach the model through the module the engine hands it (the full
  fine-tunes do: ``FineTuneModule`` carries its model along). fp16 (its grad scaler) is refused
  with FSDP: use bf16.
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Callable, Iterable

import torch
from torch import nn

from vlmood import distributed as D
from vlmood.errors import UsageError

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")

#: attribute names of the block containers: open_clip ``Transformer.resblocks``, timm ``blocks``,
#: Hugging Face encoders ``layers`` (CLIP) and ``layer`` (BERT)
BLOCK_CONTAINERS = ("resblocks", "blocks", "layers", "layer")


def find_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``module``: the children of every ``nn.ModuleList``/``nn.Sequential``
    named in :data:`BLOCK_CONTAINERS`, outermost containers only (a block's own inner containers
    are part of it), in module order."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()  # ids of modules under a block already taken
    for name, m in module.named_modules():
        if id(m) in inside:
            continue
        if name.rpartition(".")[2] in BLOCK_CONTAINERS and isinstance(m, nn.ModuleList | nn.Sequential):
            for child in m.children():
                blocks.append(child)
                inside.update(id(x) for x in child.modules())
    return blocks


# ---------------------------------------------------------------------------------------------- checkpointing
def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """A block's ``forward`` under non-reentrant activation checkpointing (only when gradients
    are being recorded; the class's own forward otherwise)."""
    forward = type(self).forward.__get__(self)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def enable_grad_checkpointing(module: nn.Module) -> Callable[[], None]:
    """Checkpoint every block of ``module`` (:func:`find_blocks`); returns the function that
    removes it again (each block's own ``forward`` back as it was). A module without blocks trains
    as it is (a warning says so)."""
    blocks = find_blocks(module)
    if not blocks:
        log.warning(
            "grad_checkpointing: %s has no transformer blocks (%s) to checkpoint; training without it",
            type(module).__name__,
            "/".join(BLOCK_CONTAINERS),
        )
    undo: list[tuple[nn.Module, object]] = []
    for b in blocks:
        before = b.__dict__.get("forward")  # an instance-level forward already there (rare)
        b.forward = types.MethodType(_checkpointed_forward, b)
        undo.append((b, before))
    log.debug("grad_checkpointing: %d blocks of %s", len(blocks), type(module).__name__)

    def restore() -> None:
        for b, before in undo:
            if before is None:
                b.__dict__.pop("forward", None)
            else:
                b.forward = before

    return restore


def is_checkpointed(module: nn.Module) -> bool:
    """True when some block of ``module`` runs under :func:`enable_grad_checkpointing`."""
    return any(
        getattr(m.__dict__.get("forward"), "__func__", None) is _checkpointed_forward
        for m in module.modules()
    )


# ---------------------------------------------------------------------------------------------- FSDP
def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:  # torch 2.4-2.5
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError as e:
            raise UsageError(
                f"strategy fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.4); this is "
                f"torch {torch.__version__}: upgrade torch or use strategy=ddp"
            ) from e
    return fully_shard


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor
    return DTensor


def fsdp_applies() -> bool:
    """FSDP shards over a process group (torchrun; world size 1 included when the caller made one)."""
    return D.is_initialized()


def _full(t: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """The full tensor of a sharded (DTensor) ``t`` (a collective: every rank calls it), on the
    CPU where ``keep``, else None; a plain tensor is cloned to the CPU."""
    if isinstance(t, _dtensor_type()):
        full = t.full_tensor()
    else:
        full = t
    return full.detach().to("cpu", copy=True) if keep else None


def _local_shard(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``full`` for the sharded parameter ``p`` (FSDP2 splits dim ``d`` as
    ``torch.chunk`` does; ranks past the last chunk hold an empty one)."""
    (placement,) = p.placements
    dim = placement.dim
    mesh = p.device_mesh
    rank, world = mesh.get_local_rank(), mesh.size()
    chunks = torch.chunk(full, world, dim=dim)
    local = chunks[rank] if rank < len(chunks) else full.narrow(dim, 0, 0)
    own = p.to_local()
    if tuple(local.shape) != tuple(own.shape):
        raise RuntimeError(
            f"checkpoint tensor of shape {tuple(full.shape)} does not split into this rank's shard "
            f"{tuple(own.shape)} of a {tuple(p.shape)} parameter"
        )
    return local


def _scalar_view(name: str) -> property:
    """The [1] parameter ``name`` read as 0-dim while it is a plain tensor (inside forward, where
    FSDP has put the gathered parameter in place); FSDP's own look-ups between forwards get the
    sharded DTensor itself."""

    def get(self):
        p = self._parameters[name]
        return p if isinstance(p, _dtensor_type()) else p.view(())

    return property(get)


def _lift_scalars(root: nn.Module) -> int:
    """FSDP2 shards along a dimension and refuses 0-dim parameters (CLIP's ``logit_scale``): on the
    (copied) module each becomes a [1] parameter under the same name, which the module reads back
    as a 0-dim view (a property on a subclass of its class), so its code runs unchanged and the
    gradient reaches the [1] parameter. Returns how many were lifted."""
    n = 0
    for m in list(root.modules()):
        names = [k for k, p in m._parameters.items() if p is not None and p.dim() == 0]
        if not names:
            continue
        cls = type(m)
        m.__class__ = type(cls.__name__, (cls,), {k: _scalar_view(k) for k in names})
        for k in names:
            p = m._parameters[k]
            m._parameters[k] = nn.Parameter(p.detach().view(1), requires_grad=p.requires_grad)
        n += len(names)
    return n


class FSDPRun:
    """FSDP2 over a structural copy of ``wrapped`` (the engine's loss module) whose parameters
    start as aliases of ``wrapped``'s; see the module docstring.

    ``root`` is the sharded copy (call it as the engine calls its module), ``module`` its
    ``.module`` (the copy of what the caller handed the engine), ``original`` the caller's.
    """

    def __init__(self, wrapped: nn.Module, device: torch.device) -> None:
        fully_shard = _fully_shard()
        from torch.distributed.device_mesh import init_device_mesh

        self.original: nn.Module = wrapped.module
        self.device = device
        # deepcopy with every parameter replaced by a new Parameter over the same storage and
        # every buffer shared: the copy costs no memory, and fully_shard (which replaces the
        # copy's parameters by DTensor shards) leaves the caller's module as it is
        memo: dict[int, object] = {}
        for p in wrapped.parameters():
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        for b in wrapped.buffers():
            memo[id(b)] = b
        root = copy.deepcopy(wrapped, memo)
        del memo
        #: every parameter's shape in the caller's module (0-dim ones are [1] in the copy)
        self.shapes = {n: tuple(p.shape) for n, p in self.original.named_parameters()}
        self.lifted = _lift_scalars(root)
        self.mesh = init_device_mesh(device.type, (D.world_size(),))
        self.blocks = find_blocks(root)
        for block in self.blocks:
            fully_shard(block, mesh=self.mesh)
        fully_shard(root, mesh=self.mesh)
        self.root = root
        self.module: nn.Module = root.module
        (log.info if D.is_main() else log.debug)(
            "FSDP: %d blocks + the root sharded over %d ranks", len(self.blocks), D.world_size()
        )

    # -------------------------------------------------------------------------- optimiser inputs
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def param_groups(self, groups: list[dict] | None) -> list[dict] | None:
        """``groups`` over the caller's parameters -> the same groups over the sharded copy's."""
        if not groups:
            return groups
        names = {id(p): n for n, p in self.original.named_parameters()}
        mine = dict(self.module.named_parameters())
        out = []
        for g in groups:
            ps = g["params"]
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            missing = [p for p in ps if id(p) not in names]
            if missing:
                raise ValueError("strategy fsdp: a param group holds a parameter that is not the module's")
            out.append({**g, "params": [mine[names[id(p)]] for p in ps]})
        return out

    # -------------------------------------------------------------------------- full state (collective)
    def full_params(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Full tensors of ``names`` on the CPU (rank 0; empty elsewhere). Every rank calls it."""
        own = dict(self.module.named_parameters())
        keep = D.is_main()
        out = {}
        for n in names:  # the same order on every rank: the gathers pair up
            t = _full(own[n], keep)
            if keep:
                out[n] = t.reshape(self.shapes[n])
        return out

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """``optimizer.state_dict()`` with full tensors (rank 0; the plain optimiser's format, so
        the checkpoint resumes under any strategy). Every rank calls it."""
        sd = optimizer.state_dict()
        keep = D.is_main()
        names = self._optimizer_names(optimizer)
        state = {}
        for k in sorted(sd["state"]):
            # a new dict per parameter: the inner dicts are the live optimiser state
            state[k] = {}
            for s, v in sorted(sd["state"][k].items()):
                if isinstance(v, _dtensor_type()):
                    v = _full(v, keep)
                    if keep:  # a 0-dim parameter's state is 0-dim again
                        v = v.reshape(self.shapes[names[int(k)]])
                state[k][s] = v
        return {**sd, "state": state}

    def _optimizer_names(self, optimizer: torch.optim.Optimizer) -> list[str]:
        names = {id(p): n for n, p in self.module.named_parameters()}
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]

    def load_params(self, params: dict[str, torch.Tensor], names: Iterable[str]) -> None:
        """Write full tensors (a checkpoint's) into this rank's shards."""
        own = dict(self.module.named_parameters())
        DTensor = _dtensor_type()
        with torch.no_grad():
            for n in names:
                p, full = own[n], params[n].reshape(own[n].shape)
                if isinstance(p, DTensor):
                    p.to_local().copy_(_local_shard(p, full.to(p.device, p.dtype)))
                else:
                    p.copy_(full)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, sd: dict) -> None:
        """Load a full-tensor optimiser state (:meth:`full_optimizer_state`, or a DDP/1-process
        checkpoint's): each state tensor shaped like its parameter becomes that parameter's shard."""
        DT = _dtensor_type()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        names = self._optimizer_names(optimizer)
        state = {}
        for k, st in sd["state"].items():
            p = params[int(k)]
            conv = {}
            for s, v in st.items():
                full_shape = self.shapes[names[int(k)]]
                # per-parameter state (exp_avg, momentum_buffer): shaped like the parameter; the
                # step counter stays as it is (0-dim like a lifted scalar's state, hence by name)
                if torch.is_tensor(v) and isinstance(p, DT) and s != "step" and tuple(v.shape) == full_shape:
                    local = _local_shard(p, v.reshape(p.shape).to(p.device))
                    v = DT.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
                conv[s] = v
            state[k] = conv
        optimizer.load_state_dict({**sd, "state": state})

    def write_back(self, names: Iterable[str]) -> None:
        """Every rank: the full trained tensors of ``names`` into the caller's module (plain
        tensors where they were). Every rank calls it."""
        own = dict(self.original.named_parameters())
        mine = dict(self.module.named_parameters())
        DTensor = _dtensor_type()
        with torch.no_grad():
            for n in names:
                p = mine[n]
                full = p.full_tensor() if isinstance(p, DTensor) else p
                own[n].copy_(full.reshape(own[n].shape))


def check_strategy(cfg) -> None:
    """``TrainConfig`` checks of ``strategy`` and ``grad_checkpointing`` (UsageError naming them)."""
    if not isinstance(cfg.grad_checkpointing, bool):
        raise UsageError(f"grad_checkpointing must be true or false, got {cfg.grad_checkpointing!r}")
    if cfg.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {cfg.strategy!r}; choose {' or '.join(STRATEGIES)}")
    if cfg.strategy == "fsdp" and cfg.precision == "fp16":
        raise UsageError("strategy fsdp does not train in fp16 (its grad scaler); use precision bf16 or fp32")
    if cfg.strategy == "fsdp" and getattr(cfg, "val_every", 0):
        raise UsageError(
            "strategy fsdp with val_every: validation runs on rank 0 alone, and a sharded model needs "
            "every rank for a forward pass; set val_every=0 or use strategy ddp"
        )
