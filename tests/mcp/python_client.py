"""Drives `camina mcp` with the official MCP Python SDK (PyPI `mcp`, 1.x),
as Python-based MCP clients do, and prints what it saw as JSON for the Rust
test (tests/all/mcp.rs) to check.

usage: python_client.py stdio CAMINA HOME WORKSPACE
       python_client.py http URL TOKEN
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def stdio(camina: str, home: str, workspace: str) -> None:
    params = StdioServerParameters(
        command=camina,
        args=["--home", home, "mcp", "--workspace", workspace],
        env={"CAMINA_LOG": "warn"},
    )
    async with stdio_client(params) as (read, write):
        await exercise(read, write)


async def http(url: str, token: str) -> None:
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write, _):
            await exercise(read, write)


async def exercise(read, write) -> None:
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
    if sys.argv[1] == "stdio":
        asyncio.run(stdio(*sys.argv[2:5]))
    else:
        asyncio.run(http(*sys.argv[2:4]))
