"""Multi-process training (what torchrun runs), on CPU with the gloo backend: two ranks with half a batch
each must take exactly the step one process takes on the whole batch (the authors' all-gather semantics)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from models.factory import create_model
from models.train.loop import TrainConfig, Trainer
from models.train.speech_experiment import SpokenTopicVideos, experiment_model_config

TOPICS = [("red", "guitar"), ("tiny", "robot"), ("golden", "piano"), ("noisy", "train")]


def _dataset() -> SpokenTopicVideos:
    cfg = experiment_model_config()
    return SpokenTopicVideos(TOPICS, seed=3, blank_speech=False, audio_shape=(128, 128), image_size=cfg.image_size)


def _train(output: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(experiment_model_config(), pretrained=False)
    cfg = TrainConfig(output_dir=output, epochs=1, batch_size=4, num_workers=0, max_steps=1, progress=False,
                      lr=1e-3, resume=False)
    trainer = Trainer(model, _dataset(), cfg)
    batch = {k: torch.stack([_dataset()[i][k] for i in range(4)]) for k in _dataset()[0]}
    rank, world = trainer.rank, trainer.world
    local = {k: v[rank * (4 // world):(rank + 1) * (4 // world)] for k, v in batch.items()}
    trainer.train_step(local)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, output: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    state = _train(f"{output}/rank{rank}")
    torch.save(state, f"{output}/state{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_take_the_same_step_as_one_process(tmp_path):
    single = _train(str(tmp_path / "single"))
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    results = [torch.load(tmp_path / f"state{r}.pt") for r in range(2)]
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, msg=f"ranks disagree on {key}")
        torch.testing.assert_close(value, single[key], atol=2e-6, rtol=1e-4, msg=f"{key} differs from one process")
