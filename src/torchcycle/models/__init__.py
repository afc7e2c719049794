"""nn.Modules only, built from params by name."""
