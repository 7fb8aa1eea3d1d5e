"""`bench` and `measure` subcommands (filled in with the benchmark module)."""


def add_measure_commands(sub) -> None:
    pass
