"""The CPU training loss (localdistil.training.loss) is TRL's loss, computed at fewer positions:
the same value, the same gradients and the same logged metrics on a batch of prompt/answer rows
of different lengths, with the LM head run only where a token is trained."""

from __future__ import annotations

import pytest
import torch

from localdistil.training.loss import IGNORE_INDEX, trained_positions


def test_trained_positions_are_those_whose_next_token_some_row_trains():
    labels = torch.tensor([
        [-100, -100, 5, 6, -100],
        [-100, -100, -100, 7, 8],
    ])
    # position t predicts token t + 1: rows train tokens 2, 3 and 3, 4
    assert trained_positions(labels).tolist() == [1, 2, 3]
    assert trained_positions(torch.full((2, 4), IGNORE_INDEX)).tolist() == []


@pytest.fixture
def trainer(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from localdistil.training.loss import sft_trainer_class

    generator = torch.Generator().manual_seed(0)
    rows = []
    for prompt_length, answer_length in [(9, 3), (14, 5), (6, 2), (11, 4)]:
        ids = torch.randint(3, 500, (prompt_length + answer_length,), generator=generator)
        labels = ids.clone()
        labels[:prompt_length] = IGNORE_INDEX
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    config = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                       use_cpu=True, report_to="none", max_length=None, seed=0)
    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                             init_lora_weights=False, task_type="CAUSAL_LM")
    return sft_trainer_class()(model=model, args=config, train_dataset=Dataset.from_list(rows),
                               peft_config=peft_config)


def _loss_and_gradients(trainer, compute_loss, batch, **kwargs):
    trainer.model.zero_grad()
    loss = compute_loss(trainer.model, dict(batch), **kwargs)
    loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter
                 in trainer.model.named_parameters() if parameter.requires_grad}
    return loss.detach(), gradients


@pytest.mark.parametrize("num_items_in_batch", [None, 40])
def test_the_loss_gradients_and_metrics_equal_trls(trainer, num_items_in_batch):
    from trl import SFTTrainer

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    head_inputs = []
    head = trainer.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, output: head_inputs.append(args[0]))
    try:
        ours, our_gradients = _loss_and_gradients(
            trainer, trainer.compute_loss, batch, num_items_in_batch=num_items_in_batch)
    finally:
        hook.remove()
    our_metrics = {key: list(values) for key, values in trainer._metrics["train"].items()}
    trainer._metrics["train"].clear()
    our_tokens, trainer._total_train_tokens = trainer._total_train_tokens, 0
    theirs, their_gradients = _loss_and_gradients(
        trainer, lambda *args, **kwargs: SFTTrainer.compute_loss(trainer, *args, **kwargs),
        batch, num_items_in_batch=num_items_in_batch)

    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert our_gradients.keys() == their_gradients.keys() and our_gradients
    for name, gradient in our_gradients.items():
        torch.testing.assert_close(gradient, their_gradients[name], rtol=1e-4, atol=1e-6,
                                   msg=name)
    their_metrics = trainer._metrics["train"]
    assert our_metrics["mean_token_accuracy"] == pytest.approx(their_metrics["mean_token_accuracy"])
    assert our_metrics["entropy"] == pytest.approx(their_metrics["entropy"], rel=1e-5)
    assert our_tokens == trainer._total_train_tokens == int(batch["attention_mask"].sum())
    # the head ran only on the trained (row, position) pairs: one row of hidden state for each
    # trained token, fewer than the positions some row trains times the rows
    (projected,) = head_inputs
    trained_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert projected.shape == (trained_tokens, trainer.model.config.hidden_size)
    assert trained_tokens < len(trained_positions(batch["labels"])) * len(batch["labels"])


def test_a_loss_this_path_does_not_compute_is_trls(trainer):
    from trl import SFTTrainer

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.args.loss_type = "dft"  # weighs each token's loss by its probability
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch))
        dft = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
        trainer.args.loss_type = "nll"
        nll = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(ours, dft)
    assert not torch.allclose(ours, nll)
