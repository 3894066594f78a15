"""The toy model zoo: small models trained by ``rtdecode`` on the simulator's stimuli."""


def check_widths(name: str, chans: tuple[int, ...], groups: int) -> None:
    """A model's channels per level: one or more positive multiples of its group-norm count
    (a ValueError naming the field and value otherwise)."""
    if not chans or any(int(c) != c or c <= 0 or c % groups for c in chans):
        raise ValueError(f"{name} {tuple(chans)!r}: want one or more positive multiples of "
                         f"norm_num_groups ({groups})")
