"""Where train.py's loop loses against the model alone, in one process: train.py's own
train_one_epoch() over its real data loader, over the same batches held in memory (the loop's code
without data loading), and the model alone (forward, backward, Adam step on one batch), taken in
turns so that a neighbour's load on a shared machine hits all three alike. Prints each round's
images/s and each loop's share of the model alone.

    python bench/loop_overhead.py [--data-path bench/out/train_speed/data] [--rounds 3] [train.py flags]

The data: the photos of bench/train_speed.sh (run it once first). Everything train.py decides (the
device, mixed precision, channels-last, workers) comes from its flags, as in a run.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import train  # noqa: E402  the loop under test is train.py's own
from helpers import devices, settings, training  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-path", default="bench/out/train_speed/data")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--alone-steps", type=int, default=8)
    args, rest = p.parse_known_args()
    out = "bench/out/loop_overhead"
    argv = ["--data-path", args.data_path, "--model", "resnet34", "--weights", "none", "--batch-size", "16",
            "--save-path", f"{out}/resNet34.pth", "--class-indices", f"{out}/class_indices.json", "--overwrite",
            "--epochs", "100"] + rest
    s = settings.resolve(train.get_args_parser().parse_args(argv), train.get_args_parser(), training.World(), None)
    with training.environment(s, training.World()) as env:
        train_set, _, sampler, loader, _ = train.load_data(s, env)
        model, plain = train.build_model(s, env, len(train_set.classes), None)
        state = training.RunState()
        optimizer, scheduler, scaler = train.build_optimizer(s, env, plain, None, len(loader), state, None)
        step = training.Step(nn.CrossEntropyLoss(), optimizer, scheduler, scaler, s, env, state)
        criterion = step.criterion
        in_memory = list(loader)  # one epoch's batches, decoded once
        x = in_memory[0][0].to(env.device, memory_format=env.memory_format)
        y = in_memory[0][1].to(env.device)

        def alone(steps):
            for _ in range(steps):
                with devices.autocast(env.device, env.amp_dtype):
                    loss = criterion(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

        def epoch(batches):
            state.step, state.seconds, state.sums = 0, 0.0, torch.zeros(3)
            sampler.set_epoch(state.epoch)
            start = time.perf_counter()
            _, _, seen = train.train_one_epoch(model, batches, step)
            return seen / (time.perf_counter() - start)

        alone(2)  # warm-up: the first steps build oneDNN's kernels
        epoch(in_memory)
        print(f"mixed precision: {devices.dtype_name(env.amp_dtype)}, channels-last: "
              f"{env.memory_format == torch.channels_last}, workers: {s.workers}, threads: {torch.get_num_threads()}")
        print(f"{'round':>5} {'alone':>8} {'loop, in memory':>16} {'loop, loader':>13} {'share':>12}")
        for r in range(args.rounds):
            start = time.perf_counter()
            alone(args.alone_steps)
            a = args.alone_steps * s.batch_size / (time.perf_counter() - start)
            mem, real = epoch(in_memory), epoch(loader)
            print(f"{r + 1:>5} {a:8.2f} {mem:16.2f} {real:13.2f}   {mem / a:.2f} / {real / a:.2f}", flush=True)


if __name__ == "__main__":
    main()
