"""Tool catalogues → system prompts, output JSON Schema and GBNF grammars (torch-free)."""

from .calls import NoTool, ToolCall, make_call, parse_tool_call
from .canonical import format_number, serialize_call, serialize_no_tool
from .catalogue import Catalogue
from .copied import Copied, CopiedArgument
from .errors import CatalogueError, SchemaError
from .gbnf import GrammarOptions, catalogue_gbnf
from .loading import load_catalogue
from .output_schema import output_json_schema
from .spans import is_span, spans
from .system_prompt import PromptMode, render_system_prompt
from .tool import NO_TOOL, ToolSpec

__all__ = [
    "NO_TOOL",
    "Catalogue",
    "CatalogueError",
    "Copied",
    "CopiedArgument",
    "GrammarOptions",
    "NoTool",
    "PromptMode",
    "SchemaError",
    "ToolCall",
    "ToolSpec",
    "catalogue_gbnf",
    "format_number",
    "is_span",
    "load_catalogue",
    "make_call",
    "output_json_schema",
    "parse_tool_call",
    "render_system_prompt",
    "serialize_call",
    "serialize_no_tool",
    "spans",
]
