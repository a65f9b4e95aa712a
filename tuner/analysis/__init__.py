"""What a search's results mean: the width→λ scaling rule and its figures."""
