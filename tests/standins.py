"""Test stand-ins shared by several test files (importable: pytest puts ``tests/`` on sys.path)."""

import torch


class UniformJump:
    """Test stand-in for the graph process: Q_s = (1-b_s) I + b_s 11ᵀ/N, dense matrices."""

    def __init__(self, num_states: int, num_steps: int) -> None:
        self.num_states, self.num_steps = num_states, num_steps
        N = num_states
        b = torch.linspace(0.05, 0.6, num_steps, dtype=torch.float64)
        eye, unif = torch.eye(N, dtype=torch.float64), torch.full((N, N), 1.0 / N, dtype=torch.float64)
        self.Q = torch.stack([eye] + [(1 - bs) * eye + bs * unif for bs in b]).float()  # (S+1, N, N)
        abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - b, 0)])
        self.Qbar = torch.stack([a * eye + (1 - a) * unif for a in abar]).float()  # (S+1, N, N)

    def marginal(self, l0, s):
        return self.Qbar[s.unsqueeze(1), l0]  # (B, T, N)

    def q_sample(self, l0, s, generator):
        p = self.marginal(l0, s)
        return torch.multinomial(p.reshape(-1, self.num_states), 1, generator=generator).view(l0.shape)

    def posterior(self, x0, l_s, s):
        if not x0.is_floating_point():
            x0 = torch.nn.functional.one_hot(x0, self.num_states).float()
        fact1 = self.Q[s.unsqueeze(1), l_s]  # (B, T, N) = Q_s[:, l_s] (symmetric)
        fact2 = torch.bmm(x0, self.Qbar[s - 1])  # (B, T, N)
        p = fact1 * fact2
        return p / p.sum(-1, keepdim=True)

    def reverse_probs(self, logits_x0, l_s, s):
        return self.posterior(torch.softmax(logits_x0, -1), l_s, s)
