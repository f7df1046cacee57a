"""Training stages: one module per stage (bc, reward, preference_ft, reinforce, dpo) and common mechanics."""
