"""The Gradio page of `cad3d serve`: convert drawings in the browser, and see the evaluation and
the training curves.

Tab "Convert": upload drawings (or tick examples), choose method, points, steps, guidance and
seed, press Convert; each drawing gets a panel with an interactive 3D view (the GLB), the path
and weights used, the time, and PLY/OBJ/NPY/GLB downloads, or its error message. Tab
"Evaluation & training": eval.md, the eval chart and the loss curves of the runs found.

Invariants: binds to 127.0.0.1 unless told otherwise and never opens a share link; one
conversion at a time (the converter is shared); the API endpoint ``/convert`` (gradio_client)
returns the per-drawing JSON and all output files.
"""

from __future__ import annotations

from pathlib import Path

from cad3d.app.service import ConversionService, DrawingResult

DOWNLOADS = ("glb", "ply", "obj", "npy")


def _panel_text(d: DrawingResult) -> str:
    if d.error:
        return f"### {d.name}\n**Could not convert:** {d.error}"
    if d.method == "geometric":
        used = "no weights"
    else:
        used = f"{'trained' if d.trained else 'untrained'} weights " + ", ".join(f"`{w}`" for w in d.weights.values())
    note = f" · {d.note}" if d.note else ""
    return f"### {d.name}\npath **{d.method}** · {used} · {d.seconds:.2f} s{note}"


def build_app(service: ConversionService, examples: list[Path] | None = None):
    """The `gradio.Blocks` page (not launched) for ``service``."""
    import gradio as gr

    cfg = service.config
    examples = list(examples or [])
    by_name = {p.name: p for p in examples}
    slots = []
    with gr.Blocks(title="cad3d: drawings to 3D") as demo:
        gr.Markdown("# cad3d: 2D drawings to 3D point clouds")
        with gr.Tab("Convert"):
            with gr.Row():
                with gr.Column(scale=2):
                    files = gr.File(label=f"drawings (up to {cfg.max_files}, {cfg.max_upload_mb:g} MB each)",
                                    file_count="multiple", type="filepath", elem_id="drawings")
                    if examples:
                        gr.Gallery([(str(p), p.name) for p in examples], label="examples", columns=len(examples),
                                   height=180, allow_preview=False, interactive=False)
                    picked = gr.CheckboxGroup(list(by_name), label="convert these examples too", elem_id="examples",
                                              visible=bool(examples))
                with gr.Column(scale=1):
                    method = gr.Dropdown(service.methods(), value="auto", label="method", elem_id="method")
                    gr.Markdown(service.describe_methods())
                    points = gr.Slider(256, cfg.max_points, value=service.default_points(), step=256, label="points",
                                       elem_id="points")
                    steps = gr.Slider(1, 200, value=50, step=1, label="diffusion steps")
                    guidance = gr.Number(service.default_guidance(), minimum=0, maximum=20, label="guidance",
                                         info="classifier-free guidance of the diffusion path; 1 = the conditional model")
                    seed = gr.Number(0, precision=0, label="seed")
                    button = gr.Button("Convert", variant="primary", elem_id="convert")
            summary = gr.Markdown(elem_id="summary")
            for i in range(cfg.max_files):
                # "hidden", not False: a Model3D first rendered invisible never mounts its canvas.
                with gr.Column(visible="hidden", elem_id=f"result-{i}") as box:
                    text = gr.Markdown(elem_id=f"result-{i}-text")
                    view = gr.Model3D(label="3D view (drag to turn)", height=360, elem_id=f"result-{i}-view",
                                      clear_color=(1.0, 1.0, 1.0, 1.0))
                    with gr.Row():
                        buttons = [gr.DownloadButton(f"Download {f.upper()}", elem_id=f"result-{i}-{f}", size="sm")
                                   for f in DOWNLOADS]
                slots.append((box, text, view, buttons))
            with gr.Accordion("all results (JSON) and files", open=False):
                details = gr.JSON(label="results")
                all_files = gr.File(label="all output files", file_count="multiple")
            state = gr.State([])

        # Drawn when the tab is first opened (matplotlib takes seconds), not at start-up.
        with gr.Tab("Evaluation & training") as tab:
            eval_text = gr.Markdown("Loading the evaluation and the training curves ...")
            chart = gr.Image(label="evaluation chart", interactive=False, visible=False)
            curves = gr.Gallery(label="loss curves of the trained models", columns=1, height="auto",
                                object_fit="contain", visible=False)
            notes = gr.Markdown()
            refresh = gr.Button("Refresh", size="sm")

        def evaluation(force: bool = False):
            text_, chart_ = service.evaluation_page()
            figures, notes_ = service.loss_figures(refresh=force)
            return (text_, gr.Image(chart_, visible=chart_ is not None), gr.Gallery(figures, visible=bool(figures)),
                    "\n".join(f"- {n}" for n in notes_))

        tab_outputs = [eval_text, chart, curves, notes]
        tab.select(evaluation, None, tab_outputs, api_visibility="private")
        refresh.click(lambda: evaluation(True), None, tab_outputs, api_visibility="private")

        def convert(uploads, chosen, method_, points_, steps_, guidance_, seed_):
            paths = [Path(u) for u in (uploads or [])] + [by_name[n] for n in (chosen or []) if n in by_name]
            done, text_ = service.convert(paths, method_, num_points=points_, steps=steps_, guidance=guidance_,
                                          seed=int(seed_ or 0))
            outputs = [p for d in done for k, p in d.files.items() if k in DOWNLOADS]
            return done, text_, [d.as_dict() for d in done], outputs or None

        def show(done):
            updates = []
            for i, (box, text, view, buttons) in enumerate(slots):
                d = done[i] if i < len(done) else None
                ok = d is not None and d.error is None
                updates += [gr.Column(visible=True if d is not None else "hidden"), _panel_text(d) if d else "",
                            gr.Model3D(value=d.files["view"] if ok else None, visible=True if ok else "hidden")]
                updates += [gr.DownloadButton(value=d.files.get(f) if ok else None, visible=ok and f in d.files)
                            for f in DOWNLOADS]
            return updates

        slot_outputs = [c for box, text, view, buttons in slots for c in (box, text, view, *buttons)]
        button.click(convert, [files, picked, method, points, steps, guidance, seed], [state, summary, details, all_files],
                     api_name="convert", concurrency_limit=1).then(show, state, slot_outputs, api_visibility="private")
    return demo


def launch(service: ConversionService, *, host: str = "127.0.0.1", port: int | None = None,
           examples: list[Path] | None = None):
    """Build the page and serve it on ``host:port`` (no share link) in a background thread;
    returns the Blocks (``.block_thread()`` waits for Ctrl-C, ``.close()`` stops it) and its URL."""
    demo = build_app(service, examples)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name=host, server_port=port, share=False, quiet=True, prevent_thread_lock=True,
                            max_file_size=int(service.config.max_upload_mb * 1e6), allowed_paths=[str(service.work_dir)],
                            show_error=False, footer_links=["api"])
    return demo, url
