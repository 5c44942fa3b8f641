//! `drummer-search`: the Drummers' workspace search tools.
//!
//! Finds files by glob, searches their text with a regular expression and
//! reads them. Read-only by design (its shipped policy mounts the workspace
//! read-only, and it offers no tool that writes). Results are capped so a
//! huge tree cannot flood a model's context.

use camina_skill_kit::{
    Guest, Manifest, ReadFileInput, Tool, ToolError, Workspace, call_search, parse_input,
    read_file, read_file_tool, search_tools, unknown_tool,
};

const NAME: &str = "drummer-search";

struct DrummerSearch;

camina_skill_kit::export_skill!(DrummerSearch);

impl Guest for DrummerSearch {
    fn describe() -> Manifest {
        Manifest {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Search the task's workspace: find files by glob, grep their text \
                          with a regular expression, read them."
                .into(),
            tools: tools(),
        }
    }

    fn call(name: String, input: String) -> Result<String, ToolError> {
        let ws = Workspace::discover()?;
        if let Some(result) = call_search(&ws, &name, &input) {
            return result;
        }
        match name.as_str() {
            "read_file" => read_file(&ws, parse_input::<ReadFileInput>(&input)?),
            other => Err(unknown_tool(NAME, other)),
        }
    }
}

fn tools() -> Vec<Tool> {
    let mut tools = search_tools();
    tools.push(read_file_tool());
    tools
}
