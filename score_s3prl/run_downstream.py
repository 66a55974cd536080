"""``score-s3prl downstream ARGS``: s3prl's own ``run_downstream.py`` with SCORE upstreams and recipes.

ARGS are s3prl's flags, unchanged (``-m -u -k -d -c -o -p -e -n -t -l --device`` ...). Before
handing them to s3prl's ``main`` this

1. applies :mod:`score_s3prl.compat` (stock s3prl on torch/torchaudio 2.11, huggingface_hub >= 1);
2. registers the ``score_hubert*`` hub entries (:mod:`score_s3prl.hub`);
3. supplies the recipes the registry's s3prl lacks (:mod:`score_s3prl.recipes`): ``-d asr``,
   ``-d ctc`` and ``-d quesst14_dtw`` get our config when no ``-c`` is given, relative asset
   paths resolve against the config's folder (any working directory works), and data paths
   are checked after ``-o`` with errors that name the config key and how to set it;
4. checks every value s3prl would ``eval()``, import, download or write to against an allow-list
   (:mod:`score_s3prl.s3prl_guard`): a ``-e`` checkpoint's saved args and config as it loads,
   ``-c`` read as plain YAML, ``-o`` read as literals, and the final run. Only the recipes'
   downstreams run.

Example::

    score-s3prl downstream -m train -u score_hubert -d asr -n asr_score -o "$(...prepare asr ...)"
    score-s3prl downstream -m evaluate -e result/downstream/asr_score/dev-clean-best.ckpt -t test-clean

Also runs as ``python -m score_s3prl.run_downstream ARGS``.
"""

from __future__ import annotations

import builtins
import sys

from .errors import ScoreError
from .checkpoints.safeload import weights_only_torch_load

if __name__ == "__main__":
    # `python -m score_s3prl.run_downstream`: go through the CLI, which checks that torch and
    # torchaudio load before anything imports them and prints a ScoreError as one line.
    from .cli import main as cli_main

    sys.exit(cli_main(["downstream", *sys.argv[1:]]))

from .stack import require_loadable  # noqa: E402

require_loadable()  # imported as a library: stop before compat/hub import torchaudio

from . import compat, hub, recipes, s3prl_guard  # noqa: E402


def _one_line(exc: ScoreError) -> ScoreError:
    """A ScoreError raised in a DataLoader worker, back to its own message.

    PyTorch re-raises worker exceptions as the same type with the worker's whole traceback as
    the message; its last line is ``module.Class: <the original message>``.
    """
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return exc
    last = text.splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return type(exc)(last[len(prefix):] if last.startswith(prefix) else last)


def resolve_device_flag(argv: list[str]) -> list[str]:
    """``argv`` with ``--device auto`` resolved here, on the node that runs the stage (s3prl
    itself knows no ``auto``); the SUPERB runner prints and plans ``auto`` unresolved."""
    from .runtime import resolve_device

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--device" and i + 1 < len(out) and out[i + 1] == "auto":
            out[i + 1] = resolve_device("auto")
        elif arg == "--device=auto":
            out[i] = f"--device={resolve_device('auto')}"
    return out


def main(argv: list[str] | None = None) -> int:
    """Run s3prl's ``run_downstream.main`` on ``argv`` (default: ``sys.argv[1:]``)."""
    argv = resolve_device_flag(list(sys.argv[1:] if argv is None else argv))
    compat.apply()
    hub.register()
    recipes.install()
    s3prl_guard.check_past_exp(argv)
    user_args = s3prl_guard.user_args(argv)  # what -o sets wins over a checkpoint's saved args
    from s3prl import run_downstream as stock

    stock_args = stock.get_downstream_args

    def get_downstream_args():
        # s3prl reads -c and -e and applies -o here (a -e checkpoint's args and config are
        # checked as it loads); the whole run is checked and our paths resolved right after.
        with weights_only_torch_load(inspect=s3prl_guard.saved_state_check(user_args)):
            args, config, backup_files = stock_args()
        s3prl_guard.check_run(args, config)
        recipes.prepare_config(args, config)
        return args, config, backup_files

    # s3prl's runner leaves its TensorBoard writers open when a run fails; their worker thread
    # is then stopped at interpreter exit, which Python 3.12 refuses with a traceback. Track them
    # and close them however the run ends (closing twice does nothing).
    from s3prl.downstream import runner as stock_runner

    writers: list = []
    writer_class = stock_runner.SummaryWriter

    def tracked_writer(*args, **kwargs):
        writers.append(writer_class(*args, **kwargs))
        return writers[-1]

    saved_argv = sys.argv
    # s3prl's main wraps builtins.isinstance (hack_isinstance) and never unwraps it: each wrapper
    # calls the one below twice, so runs in one process grew exponentially slower
    saved_isinstance = builtins.isinstance
    sys.argv = [stock.__file__, *recipes.with_default_config(argv)]
    stock.get_downstream_args = get_downstream_args
    stock_runner.SummaryWriter = tracked_writer
    # s3prl eval()s every -o value and reads -c with yaml's FullLoader: literals and plain YAML here
    stock_override, stock_yaml = stock.override, stock.yaml
    stock.override, stock.yaml = s3prl_guard.literal_override, s3prl_guard.SAFE_YAML
    try:
        # s3prl loads -e/-i states and some upstream checkpoints with a bare torch.load:
        # weights only, and a refused file is one error line (score_s3prl.checkpoints.safeload)
        with weights_only_torch_load():
            stock.main()
    except ScoreError as exc:
        clean = _one_line(exc)
        if clean is exc:
            raise
        raise clean from exc
    finally:
        sys.argv = saved_argv
        builtins.isinstance = saved_isinstance
        stock.get_downstream_args = stock_args
        stock_runner.SummaryWriter = writer_class
        stock.override, stock.yaml = stock_override, stock_yaml
        for writer in writers:
            writer.close()
    return 0
