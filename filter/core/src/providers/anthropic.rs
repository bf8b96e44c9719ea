//! Anthropic Messages API. (Stub: being written.)

use crate::providers::{ChunkOutput, ProviderResponse, TranslateContext, UpstreamRequest};
use crate::request::ChatRequestSummary;
use crate::snapshot::Deployment;
use crate::{GatewayError, Usage};

/// Builds the Anthropic request.
pub fn build_request(
    _summary: &ChatRequestSummary<'_>,
    _body: &[u8],
    _deployment: &Deployment,
    _context: &TranslateContext,
) -> Result<UpstreamRequest, GatewayError> {
    Err(GatewayError::invalid("model", "anthropic translation is not available yet"))
}

/// Response side of an Anthropic request.
#[derive(Debug)]
pub struct AnthropicResponse {}

impl AnthropicResponse {
    /// Response side for a request sent with `stream` and the client's `include_usage`.
    pub fn new(_context: &TranslateContext, _stream: bool, _include_usage: bool) -> Self {
        AnthropicResponse {}
    }
}

impl ProviderResponse for AnthropicResponse {
    fn rewrites_body(&self) -> bool {
        true
    }
    fn translate_body(&mut self, _body: &[u8], _usage: &mut Usage) -> Result<Option<Vec<u8>>, GatewayError> {
        Err(GatewayError::BadUpstreamResponse("not implemented".into()))
    }
    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        crate::providers::openai_shaped_error(status, body)
    }
    fn translate_stream(&mut self, _chunk: &[u8], _eos: bool, _out: &mut Vec<u8>, _usage: &mut Usage) -> Result<ChunkOutput, GatewayError> {
        Err(GatewayError::BadUpstreamResponse("not implemented".into()))
    }
}
