"""SCORE fine-tuning speed: HuBERT Base architecture (random weights), real LibriSpeech batches.

Runs the real training loop (``score_s3prl.train.train``) with the paper's config for a few
updates and prints updates/s, audio seconds/s and the projected wall time of the full recipe
(3600 updates x 8 utterances of train-clean-100, mean 12.69 s each). The peer, measured in the
same run on the same audio, is one inference pass of s3prl's HubertModel: the ratio says how
many inference passes one SCORE update costs (student forward + backward, teacher forward,
views, soft-DTW).

    python benchmarks/bench_finetune.py                  # CPU, 3 timed updates
    python benchmarks/bench_finetune.py --device cuda --updates 20
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from score_s3prl.audio import load_audio
from score_s3prl.checkpoints.hubert import build_hubert, random_hubert_state, write_converted
from score_s3prl.config import load_config
from score_s3prl.train import train

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "librispeech-sample"
TRAIN_CLEAN_100_MEAN_SECONDS = 100.6 * 3600 / 28539  # 100.6 h in 28,539 utterances
PAPER_UPDATES, PAPER_UTTERANCES = 3600, 8


def default_data() -> tuple[Path, str]:
    if (SHARED_SAMPLE / "train-clean-100").is_dir():
        return SHARED_SAMPLE, "train-clean-100"
    return REPO / "assets" / "librispeech-mini", "train-clean-100,transcribed"


def timed_updates(log_csv: Path) -> tuple[float, float, int]:
    """(seconds, audio seconds, updates) over the logged updates after the first (warm-up)."""
    with open(log_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    first, last = rows[0], rows[-1]
    seconds = float(last["seconds"]) - float(first["seconds"])
    audio = (float(last["audio_hours"]) - float(first["audio_hours"])) * 3600
    return seconds, audio, len(rows) - 1


def peer_inference_seconds(state: dict, audio: list[torch.Tensor], device: torch.device) -> float:
    """Time one no-grad pass of s3prl's HubertModel over ``audio`` (batches of 8)."""
    model = build_hubert(state)[0].to(device)
    with torch.inference_mode():
        for warm in (True, False):
            start = time.perf_counter()
            for i in range(0, len(audio), 8):
                batch = torch.nn.utils.rnn.pad_sequence(audio[i : i + 8], batch_first=True).to(device)
                pad = torch.zeros(batch.shape, dtype=torch.bool, device=device)
                model.extract_features(batch, padding_mask=pad, mask=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if not warm:
                return time.perf_counter() - start
    raise AssertionError("unreachable")


def main() -> None:
    data_root, subsets = default_data()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--updates", type=int, default=3, help="timed updates (after one warm-up)")
    parser.add_argument("--data", default=str(data_root), help="LibriSpeech-layout root")
    parser.add_argument("--subsets", default=subsets, help="comma-separated subsets")
    parser.add_argument("--utterances", type=int, default=PAPER_UTTERANCES,
                        help="utterances per update (the paper: 8; fewer for a quick CPU run)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        state = random_hubert_state(seed=0)  # HuBERT Base architecture
        init = Path(tmp) / "hubert_base_random.pt"
        write_converted(init, **state)
        cfg = load_config(REPO / "upstream_configs" / "score_hubert_base.yaml", values_set={
            "init": str(init), "data.root": args.data, "data.subsets": args.subsets.split(","),
            "out": str(Path(tmp) / "run"), "device": args.device, "log_every": 1,
            "save_every": 10**9, "optim.total_updates": args.updates + 1,
            "optim.utterances_per_update": args.utterances,
        })
        train(cfg)
        seconds, audio, updates = timed_updates(Path(tmp) / "run" / "train_log.csv")

        # the peer: inference over the same amount of real audio, cut into the same batches
        from score_s3prl.data import scan_librispeech

        utterances = scan_librispeech(args.data, args.subsets.split(","), cache_dir=Path(tmp) / "cache")
        crop = int(cfg.data.crop_seconds * 16000)
        clips, total = [], 0.0
        for utt in utterances:
            if total >= audio:
                break
            clips.append(load_audio(utt.path)[:crop])
            total += clips[-1].numel() / 16000
        peer = peer_inference_seconds(state, clips, torch.device(args.device))

    per_update = seconds / updates
    audio_rate = audio / seconds
    full_recipe_h = PAPER_UPDATES * PAPER_UTTERANCES * TRAIN_CLEAN_100_MEAN_SECONDS / audio_rate / 3600
    peer_rate = total / peer
    print(f"device {args.device}: HuBERT Base architecture, {updates} timed updates of "
          f"{cfg.optim.utterances_per_update} utterances from {args.data} ({args.subsets})")
    print(f"  SCORE update:      {per_update:8.2f} s/update  {1 / per_update:8.3f} updates/s  "
          f"{audio_rate:8.1f} audio s/s")
    print(f"  peer, s3prl HubertModel inference: {peer_rate:8.1f} audio s/s "
          f"({total:.0f} s of the same audio)")
    print(f"  ratio: one SCORE update costs {peer_rate / audio_rate:.2f} inference passes of its audio")
    print(f"  projected full recipe ({PAPER_UPDATES} x {PAPER_UTTERANCES} utterances, "
          f"{TRAIN_CLEAN_100_MEAN_SECONDS:.2f} s mean): {full_recipe_h:.2f} h "
          f"(paper: under 5 h on one GPU; target on one H200: under 0.25 h)")


if __name__ == "__main__":
    main()
