"""Multilayer perceptrons: one network, and ``k`` networks of one shape run as one batched computation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp", "Flatten", "BatchedLinear", "BatchedMLP", "MemberRows"]


def mlp(
    dims: Sequence[int],
    activation: type[nn.Module] = nn.ReLU,
    final_activation: type[nn.Module] | None = None,
) -> nn.Sequential:
    """A stack of ``Linear`` layers ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    ``activation`` follows every hidden layer; ``final_activation`` (if any) the last one.
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise ValueError(f"mlp needs at least two positive layer sizes, got {dims}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(activation())
    if final_activation is not None:
        layers.append(final_activation())
    return nn.Sequential(*layers)


class Flatten(nn.Module):
    """Flatten everything but the batch axis (images ``N x C x H x W`` become ``N x CHW``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class BatchedLinear(nn.Module):
    """``n_members`` independent ``Linear(in_features, out_features)`` layers run as one batched product.

    The members' weights are stacked into ``weight`` (``n_members x in_features x out_features``,
    i.e. each member's ``nn.Linear.weight`` transposed) and ``bias`` (``n_members x 1 x out_features``),
    and the forward pass is a single ``torch.baddbmm`` instead of a Python loop over members.

    Input ``n_members x N x in_features`` feeds member ``m`` its own rows ``x[m]``; a 2-D input
    ``N x in_features`` is shared by every member (a broadcast view, not a copy). The output is
    always ``n_members x N x out_features``. Each member is initialised like ``nn.Linear``.
    """

    def __init__(self, n_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        if min(n_members, in_features, out_features) < 1:
            raise ValueError(
                f"BatchedLinear needs positive sizes, got n_members={n_members}, "
                f"in_features={in_features}, out_features={out_features}"
            )
        self.n_members = int(n_members)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = nn.Parameter(torch.empty(self.n_members, self.in_features, self.out_features))
        self.bias = nn.Parameter(torch.empty(self.n_members, 1, self.out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default (Kaiming-uniform with a = sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = self.in_features ** -0.5
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear]) -> "BatchedLinear":
        """A batched layer whose member ``m`` computes exactly what ``linears[m]`` does."""
        linears = list(linears)
        if not linears:
            raise ValueError("from_linears needs at least one nn.Linear")
        out_features, in_features = linears[0].weight.shape
        layer = cls(len(linears), in_features, out_features)
        with torch.no_grad():
            for m, linear in enumerate(linears):
                if linear.weight.shape != (out_features, in_features) or linear.bias is None:
                    raise ValueError("from_linears needs nn.Linear layers of one shape, all with a bias")
                layer.weight[m].copy_(linear.weight.t())
                layer.bias[m, 0].copy_(linear.bias)
        return layer

    def member(self, m: int) -> nn.Linear:
        """Member ``m`` as a stand-alone ``nn.Linear`` (a copy of its weights)."""
        linear = nn.Linear(self.in_features, self.out_features)
        with torch.no_grad():
            linear.weight.copy_(self.weight[m].t())
            linear.bias.copy_(self.bias[m, 0])
        return linear.to(self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_members, -1, -1)
        elif x.dim() != 3 or x.shape[0] != self.n_members:
            raise ValueError(
                f"BatchedLinear expects N x {self.in_features} (shared) or "
                f"{self.n_members} x N x {self.in_features} (one input per member), got {tuple(x.shape)}"
            )
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, in_features={self.in_features}, out_features={self.out_features}"


class BatchedMLP(nn.Module):
    """``n_members`` MLPs ``dims[0] -> ... -> dims[-1]`` (ReLU between layers) as one batched network.

    Member ``m`` computes exactly what ``pyro_hc.nn.mlp(dims)`` computes with member ``m``'s weights
    (``final_activation=True`` adds a ReLU after the last layer too). Input ``N x dims[0]`` is
    shared by all members, ``n_members x N x dims[0]`` gives each member its own rows; the output is
    ``n_members x N x dims[-1]``.
    """

    def __init__(self, n_members: int, dims: Sequence[int], final_activation: bool = False) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"BatchedMLP needs at least two positive layer sizes, got {dims}")
        self.layers = nn.ModuleList(BatchedLinear(n_members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.final_activation = final_activation

    @classmethod
    def from_mlps(cls, mlps: Sequence[nn.Sequential], final_activation: bool = False) -> "BatchedMLP":
        """Stack ``k`` MLPs of one shape (``nn.Sequential`` of ``Linear``/``ReLU``) into one batched MLP."""
        per_member = [[m for m in seq if isinstance(m, nn.Linear)] for seq in mlps]
        dims = [per_member[0][0].in_features] + [layer.out_features for layer in per_member[0]]
        batched = cls(len(per_member), dims, final_activation)
        batched.layers = nn.ModuleList(
            BatchedLinear.from_linears([layers[j] for layers in per_member]) for j in range(len(dims) - 1)
        )
        return batched.to(per_member[0][0].weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for j, layer in enumerate(self.layers):
            x = layer(x)
            if j < last or self.final_activation:
                x = torch.relu(x)
        return x


class MemberRows:
    """Route each datum to one member of a batched network: ``N`` rows packed as ``n_members x width``.

    Datum ``n`` goes to member ``member[n]``; :meth:`pack` lays the rows out as ``n_members x width x ...``
    (member ``i``'s data in arrival order, zero rows after them, ``width`` the largest member's count)
    for a :class:`BatchedMLP` that feeds member ``i`` its own rows, and :meth:`unpack` reads the
    ``N`` results back in the data's order. Both are differentiable gathers.

    Why: a hard assignment (k-DVAE's Eq. 6, k-DAE's reconstruction) trains only the winning member
    of each datum. Running every member on every datum costs ``n_members`` times the arithmetic of
    one network for nothing; the packed layout costs ``n_members x width`` rows, about one
    network's worth when the members are balanced. ``width`` is read from the data (one host sync),
    so the packed shapes vary between steps: not for CUDA graph capture.
    """

    def __init__(self, member: torch.Tensor, n_members: int) -> None:
        member = torch.as_tensor(member, dtype=torch.long)
        if member.dim() != 1:
            raise ValueError(f"member must be a vector of member indices, got shape {tuple(member.shape)}")
        if member.numel() and int(member.min()) < 0:  # before bincount, which refuses negatives itself
            raise ValueError(f"member indices must lie in [0, {n_members}), got {int(member.min())}")
        counts = torch.bincount(member, minlength=n_members)
        if counts.numel() > n_members:  # its length is metadata: no host sync
            raise ValueError(f"member indices must lie in [0, {n_members}), got {int(member.max())}")
        self.member = member
        self.n_members = int(n_members)
        self.width = int(counts.max()) if member.numel() else 0
        # slot of datum n among its member's rows, in arrival order (stable sort, then rank in group)
        order = torch.argsort(member, stable=True)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(member)
        slot[order] = torch.arange(member.numel(), device=member.device) - first[member[order]]
        self.slot = slot

    def pack(self, rows: torch.Tensor) -> torch.Tensor:
        """``N x ...`` rows to ``n_members x width x ...`` (zero rows pad the lighter members)."""
        if rows.shape[0] != self.member.numel():
            raise ValueError(f"pack expects {self.member.numel()} rows, got {rows.shape[0]}")
        packed = rows.new_zeros(self.n_members, self.width, *rows.shape[1:])
        return packed.index_put((self.member, self.slot), rows)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``n_members x width x ...`` results back to the data's ``N x ...`` order."""
        return packed[self.member, self.slot]
