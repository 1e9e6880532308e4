"""The trainer comparison table of the demo."""

from nnunet_ext.demo.report import comparison_table


def _row(trainer, s, val, test, ema):
    return {"trainer": trainer, "s_per_iteration": s, "training_wall_s": 100.0,
            "validation_dice": {"0": val[0], "1": val[1]}, "test_dice": {"grey": test - 0.01, "white": test + 0.01},
            "test_overall": {"dice": test, "hd95": 4.0, "nsd": 0.9}, "curve": {"ema_pseudo_dice": ema}}


def test_rows_give_ratio_ema_and_validation_test_distance():
    table = comparison_table([_row("nnUNetTrainer_2epochs", 2.0, (0.8, 0.9), 0.80, [0.5, 0.7]),
                              _row("MISSUTrainer_2epochs", 1.0, (0.6, 0.7), 0.70, [])])
    head, rule, nn, missu = table.splitlines()
    assert head.split(" | ")[5:7] == ["final EMA pseudo-Dice", "test Dice grey"]
    assert "validation − test" in head and rule.count("---") == head.count("|") - 1
    cells = [c.strip() for c in nn.strip("|").split("|")]
    assert cells[:6] == ["nnUNetTrainer_2epochs", "2.00", "1.00", "100", "0.800 / 0.900", "0.700"]
    assert cells[8:10] == ["0.800", "0.050"]                 # mean test Dice, then (0.85 - 0.80)
    cells = [c.strip() for c in missu.strip("|").split("|")]
    assert cells[1:3] == ["1.00", "0.50"] and cells[5] == "-" and cells[9] == "-0.050"
