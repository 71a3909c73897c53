from gitops_cli.main import cli

cli(prog_name="gitops")
