"""One module per `mnm` subcommand: parse the arguments and call the function that does the work.

Rule: May import any mnm package; nothing imports it but mnm.cli.
"""
