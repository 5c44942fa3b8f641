"""Drives `camina mcp` with the official MCP Python SDK (PyPI `mcp`, 1.x)
over stdio, as Python-based MCP clients do, and prints what it saw as JSON
for the Rust test (tests/all/mcp.rs) to check.

usage: python_client.py CAMINA HOME WORKSPACE
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(camina: str, home: str, workspace: str) -> None:
    params = StdioServerParameters(
        command=camina,
        args=["--home", home, "mcp", "--workspace", workspace],
        env={"CAMINA_LOG": "warn"},
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            ok = await session.call_tool(
                "write_file", {"path": "from-python.txt", "content": "hello from python"}
            )
            bad = await session.call_tool("write_file", {"path": "missing-content.txt"})
            print(
                json.dumps(
                    {
                        "server": init.serverInfo.name,
                        "protocol": init.protocolVersion,
                        "tools": {
                            t.name: {
                                "readOnlyHint": t.annotations.readOnlyHint if t.annotations else None,
                                "required": t.inputSchema.get("required", []),
                            }
                            for t in tools.tools
                        },
                        "ok": {
                            "isError": ok.isError,
                            "structured": ok.structuredContent,
                        },
                        "bad": {
                            "isError": bad.isError,
                            "text": "".join(c.text for c in bad.content if c.type == "text"),
                        },
                    }
                )
            )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
