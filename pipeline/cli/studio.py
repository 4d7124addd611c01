"""CLI for the browser studio: ``maskgit-pipeline studio``."""
from __future__ import annotations

import click

__all__ = ["register"]


@click.command("studio")
@click.option("--model", default=None, type=click.Path(exists=True, file_okay=False),
              help="MaskGIT transformer checkpoint (default: the newest demo-out/ export).")
@click.option("--tokenizer", "tokenizer_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Tokenizer checkpoint (default: next to --model, or demo-out/tokenizer).")
@click.option("--ar-model", default=None, type=click.Path(exists=True, file_okay=False),
              help="Causal AR baseline for the side-by-side view (default: the demo's, if any).")
@click.option("--demo-out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Where `make demo` wrote its models (used without --model).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback exposes the studio to the network.")
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
def studio_cmd(model, tokenizer_dir, ar_model, demo_out, host, port, device) -> None:
    """Generate and edit in the browser: class-conditional grids, the step-by-step decode,
    MaskGIT vs the AR baseline, inpaint / replace / outpaint with a brush.

    \b
    Example (after `make demo`):
      maskgit-pipeline studio            # then open http://127.0.0.1:7860
    """
    import torch

    from pipeline.studio import Studio, make_server, resolve_paths

    paths = resolve_paths(model=model, tokenizer=tokenizer_dir, ar_model=ar_model, demo_out=demo_out)
    for line in paths.notes:
        click.echo(line)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    studio = Studio(paths, device=device)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding {host}: anyone who can reach this machine on port {port} can use the "
                   "studio (no authentication); use the default 127.0.0.1 unless you mean it", err=True)
    try:
        server = make_server(studio, host=host, port=port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port")
    click.echo(f"MaskGIT studio on http://{'[' + host + ']' if ':' in host else host}:{server.server_port}/ "
               "(Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()


def register(cli: click.Group) -> None:
    cli.add_command(studio_cmd)
