//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `{"error": {"kind": ..., "message": ...}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(value_type = Object, example = json!({"kind": "not_found", "message": "no task matches `x`"}))]
    pub error: serde_json::Value,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Caminaå", description = "Run tasks with LLM agents whose tools are sandboxed WebAssembly skills."),
    paths(
        health, crate::tasks::create, crate::tasks::list, crate::tasks::show, crate::tasks::events,
        crate::tasks::resume, crate::tasks::cancel, crate::tasks::diff, crate::tasks::undo, crate::plugins::list, crate::plugins::install,
        crate::plugins::remove, crate::plugins::audit, crate::plugins::decisions
    ),
    components(schemas(ErrorBody, crate::tasks::CreateTask, crate::tasks::TaskRef, crate::tasks::ResumeTask, crate::tasks::UndoTask,
        crate::tasks::TaskPage, crate::plugins::PluginView)),
    modifiers(&Bearer),
    tags((name = "tasks"), (name = "plugins"))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
#[expect(
    dead_code,
    reason = "documents the /healthz route served by lib.rs; utoipa only reads its attribute"
)]
async fn health() {}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
