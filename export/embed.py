"""Write a router's metadata into a GGUF: a copy of the model with `toolroute.*` fields added.

gguf-py's own `copy_with_new_metadata` (the gguf-new-metadata script) does the copy; the standard
`tokenizer.chat_template` is set to the training template too, so stock llama.cpp tools format
prompts the way the router was trained.
"""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from toolroute.runtime.files import atomic_write_text, file_sha256
from toolroute.runtime.router_file import RouterMetadata


def write_router_gguf(source: Path, destination: Path, metadata: RouterMetadata) -> Path:
    """Copy `source` to `destination` (written under a temporary name, then renamed) with metadata."""
    reader = gguf.GGUFReader(str(source), "r")
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise ValueError(f"{source}: not a GGUF model (no general.architecture)")
    architecture = arch_field.contents()
    new_metadata = {
        key: MetadataDetails(gguf.GGUFValueType.STRING, value) for key, value in metadata.to_kv().items()
    }
    new_metadata[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(
        gguf.GGUFValueType.STRING, metadata.chat_template
    )
    stale = [name for name in reader.fields if name.startswith("toolroute.")]
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    writer = gguf.GGUFWriter(str(partial), arch=architecture, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    try:
        copy_with_new_metadata(reader, writer, new_metadata, stale)
        partial.replace(destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return destination


def publish_router_gguf(source: Path, destination: Path, metadata: RouterMetadata) -> str:
    """Embed metadata into `destination` (atomic) and write its `.sha256` beside it; the digest."""
    write_router_gguf(source, destination, metadata)
    hexdigest = file_sha256(destination)
    sidecar = destination.with_name(destination.name + ".sha256")
    atomic_write_text(sidecar, f"{hexdigest}  {destination.name}\n")
    return hexdigest
