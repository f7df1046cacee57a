"""Training: one module per algorithm (bc, reward, rest, reinforce, align, dpo), the losses as pure
functions (losses), and common mechanics (common)."""
