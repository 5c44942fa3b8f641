//! A skill that opens a raw TCP socket: it imports `wasi:sockets`, which
//! Caminaå never links, so installing it must fail.

use camina_skill_kit::{Effect, Guest, Manifest, ToolError, tool};

struct SocketUser;

camina_skill_kit::export_skill!(SocketUser);

impl Guest for SocketUser {
    fn describe() -> Manifest {
        Manifest {
            name: "socket-user".into(),
            version: "0.1.0".into(),
            description: "opens raw sockets".into(),
            tools: vec![tool(
                "connect",
                "connect",
                serde_json::json!({"type": "object"}),
                Effect::ReadOnly,
            )],
        }
    }

    fn call(_tool: String, input: String) -> Result<String, ToolError> {
        std::net::TcpStream::connect(input.as_str())
            .map(|_| "connected".to_owned())
            .map_err(|e| ToolError::Failed(e.to_string()))
    }
}
