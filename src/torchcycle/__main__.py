from torchcycle.cli import app

app()
