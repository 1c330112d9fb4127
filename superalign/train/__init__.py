"""Scalable training stages: sft, reward_model, rl, dpo, best_of_n, and their math."""
