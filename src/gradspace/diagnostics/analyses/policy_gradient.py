"""policy-gradient: how much of the actor's and the critic's gradient lies in the top Hessian eigenspace of their own
loss, and how stable that subspace is (Schneider, Müller, Schnell, Koch 2024, "Identifying Policy Gradient Subspaces",
arXiv:2401.06604).

Setup: a self-contained, batched CartPole (the classic Barto–Sutton–Anderson dynamics with gym's constants, written
in torch; 200-step episodes, reward 1 per step), REINFORCE with a learned baseline (actor 4-32-32-2 softmax policy,
critic 4-32-32-1, Adam, γ = 0.97, 16 episodes per iteration). At checkpoints, fresh roll-outs with the current policy
(128 episodes) define the "true" actor loss −mean(log π(a|s)·Â) and critic loss mean((V(s) − G)²); their top-10
Hessian eigenvectors come from Lanczos. S_frac = ‖P₁₀ g‖²/‖g‖² for the true gradient and for a mini-batch gradient
(16 fresh episodes, the training batch size); the overlap ‖V(t₁)ᵀV(t₂)‖²/10 tracks the subspace over time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hessian import hessian_eigs
from ..subspace import captured_energy, subspace_overlap
from ._common import Report, mlp, num

NAME = "policy-gradient"
DESCRIPTION = "actor/critic gradient fraction in the top-10 Hessian eigenspace on a torch CartPole, and its drift"
K = 10
GAMMA = 0.97


class CartPole:
    """Batched CartPole (Barto, Sutton, Anderson 1983) with gym's CartPole-v1 constants and Euler integration.

    State (x, ẋ, θ, θ̇); action 0/1 pushes with −10/+10 N; an episode ends when |x| > 2.4, |θ| > 12° or after
    ``max_steps`` steps; reward 1 per step survived.

    Examples:
        >>> env = CartPole()
        >>> s = env.reset(3, torch.Generator().manual_seed(0))
        >>> s2, done = env.step(s, torch.tensor([0, 1, 1]))
        >>> s2.shape, done.tolist()
        (torch.Size([3, 4]), [False, False, False])
    """

    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    theta_limit, x_limit = 12 * 2 * math.pi / 360, 2.4

    def __init__(self, max_steps: int = 200) -> None:
        self.max_steps = max_steps

    def reset(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.rand(n, 4, generator=gen) * 0.1 - 0.05

    def step(self, s: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x, x_dot, th, th_dot = s.unbind(1)
        force = torch.where(action == 1, self.force_mag, -self.force_mag)
        total = self.masscart + self.masspole
        pml = self.masspole * self.length
        cos, sin = torch.cos(th), torch.sin(th)
        temp = (force + pml * th_dot**2 * sin) / total
        th_acc = (self.gravity * sin - cos * temp) / (self.length * (4.0 / 3.0 - self.masspole * cos**2 / total))
        x_acc = temp - pml * th_acc * cos / total
        nxt = torch.stack(
            [x + self.tau * x_dot, x_dot + self.tau * x_acc, th + self.tau * th_dot, th_dot + self.tau * th_acc], 1
        )
        done = (nxt[:, 0].abs() > self.x_limit) | (nxt[:, 2].abs() > self.theta_limit)
        return nxt, done


def rollout(env: CartPole, actor: nn.Module, n: int, gen: torch.Generator) -> dict[str, Tensor]:
    """n episodes in lock-step; returns flat tensors of the visited states, actions and discounted returns."""
    s = env.reset(n, gen)
    alive = torch.ones(n, dtype=torch.bool)
    states, actions, masks = [], [], []
    with torch.no_grad():
        for _ in range(env.max_steps):
            probs = F.softmax(actor(s), -1)
            a = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            states.append(s)
            actions.append(a)
            masks.append(alive.clone())
            s, done = env.step(s, a)
            alive &= ~done
            if not alive.any():
                break
    m = torch.stack(masks).float()  # T × n; reward 1 for every step taken while alive
    ret = torch.zeros_like(m)
    run = torch.zeros(n)
    for t in range(m.shape[0] - 1, -1, -1):
        run = m[t] * (1.0 + GAMMA * run)
        ret[t] = run
    keep = m.bool().reshape(-1)
    return {
        "states": torch.stack(states).reshape(-1, 4)[keep],
        "actions": torch.stack(actions).reshape(-1)[keep],
        "returns": ret.reshape(-1)[keep],
        "mean_length": float(m.sum(0).mean()),
    }


def actor_loss(actor: nn.Module, batch: dict[str, Tensor], adv: Tensor) -> Tensor:
    logp = F.log_softmax(actor(batch["states"]), -1).gather(1, batch["actions"][:, None]).squeeze(1)
    return -(logp * adv).mean()


def critic_loss(critic: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return (critic(batch["states"]).squeeze(1) - batch["returns"]).square().mean()


def _grad(net: nn.Module, loss: Tensor) -> Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])


def _measure(actor, critic, env, gen, n_true: int, n_mini: int) -> dict:
    big = rollout(env, actor, n_true, gen)
    small = rollout(env, actor, n_mini, gen)
    with torch.no_grad():
        adv_big = big["returns"] - critic(big["states"]).squeeze(1)
        adv_small = small["returns"] - critic(small["states"]).squeeze(1)
    out = {"samples_true": int(big["states"].shape[0]), "episode_length": big["mean_length"]}
    for name, net, loss_big, loss_small in (
        ("actor", actor, lambda: actor_loss(actor, big, adv_big), lambda: actor_loss(actor, small, adv_small)),
        ("critic", critic, lambda: critic_loss(critic, big), lambda: critic_loss(critic, small)),
    ):
        res = hessian_eigs(loss_big, net, k=K + 1, max_iter=150, tol=1e-4, return_info=True)
        v = res.eigenvectors[:, :K]
        g_true, g_mini = _grad(net, loss_big()), _grad(net, loss_small())
        lam = res.eigenvalues.tolist()
        out[name] = {
            "fraction_true": float(captured_energy(g_true, v)),
            "fraction_minibatch": float(captured_energy(g_mini, v)),
            "eigenvalues": lam,
            "basis": v,
        }
    return out


def run(quick: bool = False, seed: int = 0) -> Report:
    """Train REINFORCE with baseline on CartPole and measure at checkpoints; return the report."""
    iters, checkpoints, n_true = (20, [0, 10, 20], 48) if quick else (150, [0, 10, 25, 50, 75, 100, 150], 128)
    gen = torch.Generator().manual_seed(seed)
    env = CartPole()
    actor = mlp([4, 32, 32, 2], nn.Tanh, seed=seed)
    critic = mlp([4, 32, 32, 1], nn.Tanh, seed=seed + 1)
    opt_a = torch.optim.Adam(actor.parameters(), lr=3e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=3e-3)
    lengths, rows, bases = [], [], {"actor": {}, "critic": {}}
    for it in range(iters + 1):
        if it in checkpoints:
            m = _measure(actor, critic, env, gen, n_true, 16)
            for role in ("actor", "critic"):
                bases[role][it] = m[role].pop("basis")
            rows.append({"iteration": it, **m})
        if it == iters:
            break
        batch = rollout(env, actor, 16, gen)
        lengths.append(batch["mean_length"])
        with torch.no_grad():
            adv = batch["returns"] - critic(batch["states"]).squeeze(1)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        opt_a.zero_grad()
        actor_loss(actor, batch, adv).backward()
        opt_a.step()
        for _ in range(5):
            opt_c.zero_grad()
            critic_loss(critic, batch).backward()
            opt_c.step()
    P = {role: sum(p.numel() for p in net.parameters()) for role, net in (("actor", actor), ("critic", critic))}
    overlaps = {}
    for role in ("actor", "critic"):
        its = sorted(bases[role])
        overlaps[role] = {
            "consecutive": [[b, float(subspace_overlap(bases[role][a], bases[role][b]))] for a, b in zip(its[:-1], its[1:])],
            "with_first_trained": [
                [b, float(subspace_overlap(bases[role][its[1]], bases[role][b]))] for b in its[1:]
            ],
        }
    last = rows[-1]
    results = {
        "setup": {"env": "CartPole (torch, gym constants, 200 steps)", "algorithm": "REINFORCE + learned baseline",
                  "actor": "4-32-32-2 tanh", "critic": "4-32-32-1 tanh", "optimizer": "Adam 3e-3", "gamma": GAMMA,
                  "episodes_per_iteration": 16, "analysis_episodes": n_true, "k": K, "P": P, "iterations": iters},
        "episode_length_curve": lengths,
        "checkpoints": rows,
        "actor_fraction": [[r["iteration"], r["actor"]["fraction_true"]] for r in rows],
        "critic_fraction": [[r["iteration"], r["critic"]["fraction_true"]] for r in rows],
        "actor_fraction_minibatch": [[r["iteration"], r["actor"]["fraction_minibatch"]] for r in rows],
        "critic_fraction_minibatch": [[r["iteration"], r["critic"]["fraction_minibatch"]] for r in rows],
        "subspace_overlap": overlaps,
        "random_baseline": {role: K / P[role] for role in P},
    }
    summary = [
        ("episode length: first → last 10 iterations",
         f"{num(sum(lengths[:10]) / 10)} → {num(sum(lengths[-10:]) / 10)}", "rises (learning)"),
    ]
    for role in ("actor", "critic"):
        summary.append((f"{role} S_frac true / mini-batch (iteration {last['iteration']})",
                        f"{num(last[role]['fraction_true'])} / {num(last[role]['fraction_minibatch'])}",
                        f"random k/P = {num(K / P[role])}"))
        summary.append((f"{role} S_frac true over checkpoints",
                        " ".join(f"{r[role]['fraction_true']:.2f}" for r in rows), ""))
        summary.append((f"{role} top-10 overlap, consecutive checkpoints",
                        " ".join(f"{o:.2f}" for _, o in overlaps[role]["consecutive"]), f"random {num(K / P[role])}"))

    def fraction_fig(fig) -> None:
        ax1, ax2, ax3 = fig.subplots(1, 3)
        its = [r["iteration"] for r in rows]
        for role, style in (("actor", "o-"), ("critic", "s-")):
            ax1.plot(its, [r[role]["fraction_true"] for r in rows], style, label=f"{role}, true gradient")
            ax1.plot(its, [r[role]["fraction_minibatch"] for r in rows], style.replace("-", "--"), label=f"{role}, mini-batch")
        ax1.set_xlabel("iteration")
        ax1.set_ylabel(f"‖P_top{K} g‖² / ‖g‖²")
        ax1.set_title("Gradient subspace fraction")
        ax1.legend(fontsize=7)
        for role, style in (("actor", "o-"), ("critic", "s-")):
            o = overlaps[role]["consecutive"]
            ax2.plot([i for i, _ in o], [v for _, v in o], style, label=role)
        ax2.set_ylim(0, 1.05)
        ax2.set_xlabel("iteration")
        ax2.set_title("top-10 subspace overlap with previous checkpoint", fontsize=9)
        ax2.legend(fontsize=8)
        ax3.plot(lengths)
        ax3.set_xlabel("iteration")
        ax3.set_title("episode length (training batch)")

    return Report(NAME, results, summary, {"policy_gradient_subspace": fraction_fig})
