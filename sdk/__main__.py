from memreg.cli.main import run

run()
