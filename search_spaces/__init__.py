"""Preset data files (`<name>.yaml`): every setting of a trial and of its search."""
