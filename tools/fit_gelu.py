"""Fits the rational function behind the CPU kernels' exact GELU (csrc/kernels/cpu/activation.h).

GELU(x) = x * Phi(x), and Phi(x) = 1/2 + x * P(x^2) / Q(x^2) for |x| <= 5.5 (beyond it Phi is 0 or 1
to within 2e-8). P (degree 6) and Q (degree 4, Q(0) = 1) minimise the largest error of Phi over
[0, 5.5] (odd symmetry covers the rest): Loeb's iteration, each step a linear program over a grid
with the previous step's Q as the weight. The float32 coefficients are then checked the way the
kernel evaluates them (Horner, float32) against GELU in float64 on a fine grid, as a fraction of
the kernels' bound 3e-7 |x| plus four roundings of the result.

    python tools/fit_gelu.py          # prints the coefficients and the float32 check
"""
import numpy as np
from scipy.optimize import linprog
from scipy.special import erf

CLAMP = 5.5
NUMERATOR_DEGREE, DENOMINATOR_DEGREE = 6, 4


def phi_minus_half_over_x(x):
    return erf(x / np.sqrt(2)) / 2 / x


def fit(iterations=12, points=4000):
    x = np.linspace(0, CLAMP, points + 1)[1:]
    target = phi_minus_half_over_x(x)
    powers_p = np.vander(x * x, NUMERATOR_DEGREE + 1, increasing=True)
    powers_q = np.vander(x * x, DENOMINATOR_DEGREE + 1, increasing=True)
    unknowns = NUMERATOR_DEGREE + 1 + DENOMINATOR_DEGREE
    previous_q = np.ones_like(x)
    for _ in range(iterations):
        # Phi's error x (P - target Q) / Q_prev within +-E, E minimised; Q >= 1/2 on the grid.
        error_rows = np.concatenate([powers_p, -target[:, None] * powers_q[:, 1:]], 1) * (x / previous_q)[:, None]
        error_rhs = target * x / previous_q
        ones = np.ones((len(x), 1))
        q_rows = np.concatenate([np.zeros((len(x), NUMERATOR_DEGREE + 1)), -powers_q[:, 1:], np.zeros_like(ones)], 1)
        a_ub = np.vstack([np.hstack([error_rows, -ones]), np.hstack([-error_rows, -ones]), q_rows])
        b_ub = np.concatenate([error_rhs, -error_rhs, np.full(len(x), 0.5)])
        cost = np.zeros(unknowns + 1)
        cost[-1] = 1
        solution = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * unknowns + [(0, None)],
                           method="highs").x
        p = solution[:NUMERATOR_DEGREE + 1]
        q = np.concatenate([[1.0], solution[NUMERATOR_DEGREE + 1:unknowns]])
        previous_q = powers_q @ q
    return p.astype(np.float32), q.astype(np.float32)


def horner(coefficients, t):
    result = np.full_like(t, coefficients[-1])
    for c in coefficients[-2::-1]:
        result = result * t + c
    return result


def check(p, q):
    """Largest error of the float32 evaluation as a fraction of the kernels' bound."""
    x = np.linspace(-12, 12, 2_400_001).astype(np.float32)
    clamped = np.clip(x, np.float32(-CLAMP), np.float32(CLAMP))
    t = clamped * clamped
    phi = np.float32(0.5) + clamped * (horner(p, t) / horner(q, t))
    got = x * np.where(x < -CLAMP, np.float32(0), phi)
    exact = x.astype(np.float64) * 0.5 * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    bound = 3e-7 * np.abs(x) + 4 * 6e-8 * np.abs(exact) + 1e-30
    return float((np.abs(got - exact) / bound).max())


if __name__ == "__main__":
    p, q = fit()
    print("P (t^0 first):", ", ".join(f"{float(c)!r}f" for c in p))
    print("Q (t^0 first):", ", ".join(f"{float(c)!r}f" for c in q))
    print(f"worst float32 error: {check(p, q):.2f} of the bound 3e-7 |x| + 4 roundings")
