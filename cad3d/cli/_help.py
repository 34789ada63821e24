"""What `cad3d COMMAND --help` says of each command (one place for the longer texts)."""

DESCRIPTIONS = {
    "convert": (
        "Convert drawings (files or folders of images) to point clouds with whatever trained weights exist. "
        "--method auto takes the trained path with the best validation score stored with its weights (else the "
        "order diffusion, ViT, depth lifting with an ONNX depth model in --models-dir, geometric fallback). Writes "
        "DIR/<name>.<format> and DIR/<name>_preview.png. Each bad input is reported and skipped; the exit code is 1 "
        "if any input failed."
    ),
    "plot": (
        "Draw the curves of a training run folder from its epoch log (training_history.json, vae_epoch_log.json, "
        "depth_epoch_log.json, else the loss_history of training_report.json): train and validation loss per epoch, "
        "the learning rate and each part of the loss when logged. A folder holding several runs (e.g. trained_models/) "
        "gets one figure per run. A folder holding an eval.json (cad3d eval) gets its chart: Chamfer-L2 and F-score per "
        "method and per family."
    ),
    "eval": (
        "Convert the drawings of one split with every conversion path that has weights (diffusion, vit, depth "
        "lifting with an ONNX model, geometric) and the baselines (retrieval: the training cloud whose drawing looks "
        "most alike; mean: the medoid training cloud; oracle: the sample's own stored surface sample, the ceiling), "
        "every method at the same point count with no repeated points, and score each against a dense sample of the "
        "true surface: Chamfer-L2 and -L1, F-score at 1% and 2% of the bounding diagonal, as multiples of the oracle "
        "too, overall and per part family, and seconds per drawing. Writes DIR/eval.json, eval.md, eval_chart.png, "
        "eval_examples.png and loss_<run>.png for each training run under --runs, and prints the table. Unseen part "
        "types: make the training set without some families (cad3d data synth --families <the others>), train on it, "
        "then evaluate a dataset of the held-out families with --split all --train-data TRAIN_SET --families a,b "
        "(--train-data refuses to score parts that are training parts there)."
    ),
    "serve": (
        "Start a local web app: upload drawings (or pick examples), choose the method, points, steps "
        "and guidance, and see each cloud in an interactive 3D view with PLY/OBJ/NPY/GLB downloads; a "
        "second tab shows the evaluation (--eval-dir) and the loss curves of the runs in --runs-dir. The "
        "converter is loaded once, with whatever weights exist, like cad3d convert. Binds to 127.0.0.1 "
        "unless --host says otherwise; no public share link."
    ),
}
