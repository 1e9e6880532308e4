"""``nnunet-ext trainers``: our trainer names with network and paper."""


def register(sub) -> None:
    p = sub.add_parser("trainers", help="list our nnU-Net trainers (use with nnUNetv2_train -tr NAME)")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_ext.architectures import available_architectures, get_architecture

    entries = [get_architecture(n) for n in available_architectures()]
    width = max(len(e.trainer) for e in entries)
    for e in entries:
        print(f"{e.trainer:<{width}}  {e.title} (--arch {e.name}) -- {e.paper}")
    from nnunet_ext import trainers

    registered = {e.trainer for e in entries}
    variants = [getattr(trainers, n) for n in trainers.__all__ if n not in registered and n != "AbstractExtTrainer"]
    if variants:
        print("\nVariants (same network family, other settings):")
        width = max(len(c.__name__) for c in variants)
        for cls in variants:
            summary = next(iter((cls.__doc__ or "").strip().splitlines()), "")
            print(f"{cls.__name__:<{width}}  {summary}")
    print("\nShort runs: append _<E>epochs or _<E>epochs_<I>iters to any name, e.g. "
          f"{entries[0].trainer}_5epochs_20iters.")
    return 0
