"""A stand-in for nnUNetTrainer where only the training-loop hooks matter."""

import torch


class FakeTrainer:
    """The parts of nnUNetTrainer the step timing touches."""

    local_rank = 0

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
        self.device, self.current_epoch, self.log, self.ended = device, 0, [], False

    def train_step(self, batch):
        return {"loss": batch["x"] * 2}

    def print_to_log_file(self, *args):
        self.log.append(" ".join(map(str, args)))

    def on_epoch_end(self):
        self.current_epoch += 1

    def on_train_end(self):
        self.ended = True
