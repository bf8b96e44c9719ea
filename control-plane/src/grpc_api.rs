//! `tollgate.v1.Management`: the gRPC face of [`crate::manage::Manager`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::manage::token_of;
use crate::manage::{
    ApiError, BudgetChange, ErrorKind, KeyGenerate, KeyUpdate, Manager, ModelBudget,
    RateLimitChange, TeamCreate, TeamUpdate, UserCreate, UserUpdate,
};
use crate::pricing::{Prices, PRICE_FIELDS};
use crate::proto::management_server::{Management, ManagementServer};
use crate::proto::{self as pb};
use crate::spend_api::MAX_PAGE_SIZE;
use crate::store::{
    BudgetFields, DeploymentSource, KeyRow, NewMember, RateLimitFields, ReportFilter, ReportGroup,
    SpendLogFilter, SpendScope, StoredDeployment, TeamRow, UserRow, DAY_MS,
};

/// The tonic service over `manager`.
pub fn service(manager: Arc<Manager>) -> ManagementServer<GrpcManagement> {
    ManagementServer::new(GrpcManagement { manager })
}

/// The `Management` implementation.
#[derive(Clone)]
pub struct GrpcManagement {
    manager: Arc<Manager>,
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.message;
        match error.kind {
            ErrorKind::InvalidArgument => Status::invalid_argument(message),
            ErrorKind::Unauthenticated => Status::unauthenticated(message),
            ErrorKind::PermissionDenied => Status::permission_denied(message),
            ErrorKind::NotFound => Status::not_found(message),
            ErrorKind::AlreadyExists => Status::already_exists(message),
            ErrorKind::FailedPrecondition => Status::failed_precondition(message),
            ErrorKind::Internal => Status::internal(message),
        }
    }
}

fn ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn opt(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn json_field(param: &str, text: &str) -> Result<Option<Value>, ApiError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|error| ApiError::invalid(param, format!("not valid JSON: {error}")))
}

fn model_message(stored: &StoredDeployment) -> pb::Model {
    let record = &stored.record;
    pb::Model {
        id: record.id.clone(),
        model_name: record.model_name.clone(),
        model: format!("{}/{}", record.provider_name, record.upstream_model),
        api_base: record.api_base.clone(),
        api_version: record.api_version.clone().unwrap_or_default(),
        has_api_key: record.api_key.is_some(),
        max_tokens: record.default_max_tokens.unwrap_or(0),
        source: match record.source {
            DeploymentSource::Config => "config".into(),
            DeploymentSource::Api => "api".into(),
        },
        model_info_json: record
            .model_info
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        created_at_unix_ms: ms(stored.created_at_ms),
        updated_at_unix_ms: ms(stored.updated_at_ms),
        pricing: record.pricing.to_proto(),
        limits: record.limits.to_proto(),
    }
}

/// A request's rate limits: absent changes nothing; present sets all three fields.
fn limits_change(limits: Option<pb::RateLimits>) -> RateLimitChange {
    match limits {
        None => RateLimitChange::default(),
        Some(limits) => RateLimitChange::exactly(RateLimitFields::from_proto(Some(&limits))),
    }
}

/// Sets the litellm_params rate limits of `params` from `limits`: each of the three to its
/// value, or to null (cleared) when the message leaves it out.
fn insert_limits(params: &mut serde_json::Map<String, Value>, limits: &pb::RateLimits) {
    for (field, value) in [
        ("rpm", limits.rpm),
        ("tpm", limits.tpm),
        ("max_parallel_requests", limits.max_parallel_requests),
    ] {
        params.insert(field.into(), value.map_or(Value::Null, Value::from));
    }
}

fn sorted_limits(limits: std::collections::HashMap<String, u64>) -> BTreeMap<String, u64> {
    limits.into_iter().collect()
}

/// Sets the litellm_params prices of `params` from `pricing`: each of the five to its value,
/// or to null (cleared) when the message leaves it out.
fn insert_prices(params: &mut serde_json::Map<String, Value>, pricing: &pb::Pricing) {
    let prices = Prices::from_proto(pricing);
    for field in PRICE_FIELDS {
        let value = match prices.get(field) {
            // A NaN or infinite price is no JSON number: sent as text, it is refused as such.
            Some(price) => serde_json::Number::from_f64(price)
                .map_or_else(|| Value::String(price.to_string()), Value::Number),
            None => Value::Null,
        };
        params.insert(field.into(), value);
    }
}

/// A request's budget: absent changes nothing; present sets all three fields.
fn budget_change(budget: Option<pb::BudgetLimits>) -> BudgetChange {
    match budget {
        None => BudgetChange::default(),
        Some(budget) => BudgetChange {
            max_budget: Some(budget.max_budget),
            soft_budget: Some(budget.soft_budget),
            budget_duration: Some(opt(budget.budget_duration)),
        },
    }
}

fn model_budgets(budgets: HashMapOfModelBudgets) -> BTreeMap<String, ModelBudget> {
    budgets
        .into_iter()
        .map(|(model, budget)| {
            (
                model,
                ModelBudget {
                    budget_limit: budget.budget_limit,
                    time_period: opt(budget.time_period),
                    flat: false,
                },
            )
        })
        .collect()
}

type HashMapOfModelBudgets = std::collections::HashMap<String, pb::ModelBudgetLimit>;

fn budget_message(fields: &BudgetFields, reset_at: Option<i64>) -> pb::BudgetLimits {
    pb::BudgetLimits {
        max_budget: fields.max_budget,
        soft_budget: fields.soft_budget,
        budget_duration: fields.budget_duration.clone().unwrap_or_default(),
        budget_reset_at_unix_ms: reset_at.map_or(0, ms),
    }
}

fn key_message(key: &KeyRow) -> pb::KeyInfo {
    pb::KeyInfo {
        budget: Some(budget_message(&key.budget, None)),
        model_max_budget: key
            .model_max_budget
            .iter()
            .map(|(model, limit)| {
                (
                    model.clone(),
                    pb::ModelBudgetLimit {
                        budget_limit: *limit,
                        time_period: key
                            .model_budget_durations
                            .get(model)
                            .cloned()
                            .unwrap_or_default(),
                    },
                )
            })
            .collect(),
        limits: key.limits.to_proto(),
        model_rpm_limit: key
            .model_rpm_limit
            .iter()
            .map(|(model, limit)| (model.clone(), *limit))
            .collect(),
        model_tpm_limit: key
            .model_tpm_limit
            .iter()
            .map(|(model, limit)| (model.clone(), *limit))
            .collect(),
        token: key.token.clone(),
        key_name: key.key_name.clone(),
        key_alias: key.key_alias.clone().unwrap_or_default(),
        user_id: key.user_id.clone().unwrap_or_default(),
        team_id: key.team_id.clone().unwrap_or_default(),
        models: key.models.clone(),
        blocked: key.blocked,
        expires_unix_ms: key.expires_ms.map_or(0, ms),
        metadata_json: key.metadata.to_string(),
        created_at_unix_ms: ms(key.created_at),
        updated_at_unix_ms: ms(key.updated_at),
    }
}

fn user_message(user: &UserRow, teams: Vec<String>) -> pb::User {
    pb::User {
        user_id: user.user_id.clone(),
        user_email: user.user_email.clone().unwrap_or_default(),
        user_role: user.user_role.clone(),
        models: user.models.clone(),
        metadata_json: user.metadata.to_string(),
        teams,
        created_at_unix_ms: ms(user.created_at),
        budget: Some(budget_message(&user.budget, None)),
        limits: user.limits.to_proto(),
    }
}

fn team_message(team: &TeamRow) -> pb::Team {
    pb::Team {
        team_id: team.team_id.clone(),
        team_alias: team.team_alias.clone().unwrap_or_default(),
        models: team.models.clone(),
        metadata_json: team.metadata.to_string(),
        blocked: team.blocked,
        members: team
            .members
            .iter()
            .map(|member| pb::TeamMember {
                user_id: member.user_id.clone(),
                user_email: member.user_email.clone().unwrap_or_default(),
                role: member.role.clone(),
            })
            .collect(),
        created_at_unix_ms: ms(team.created_at),
        budget: Some(budget_message(&team.budget, None)),
        limits: team.limits.to_proto(),
    }
}

fn members(list: Vec<pb::TeamMember>) -> Vec<NewMember> {
    list.into_iter()
        .map(|member| NewMember {
            user_id: opt(member.user_id),
            user_email: opt(member.user_email),
            role: if member.role.is_empty() {
                "user".into()
            } else {
                member.role
            },
        })
        .collect()
}

fn litellm_params(
    model: Option<String>,
    api_base: Option<String>,
    api_key: Option<String>,
    api_version: Option<String>,
    max_tokens: Option<u32>,
) -> serde_json::Map<String, Value> {
    let mut params = serde_json::Map::new();
    for (name, value) in [
        ("model", model),
        ("api_base", api_base),
        ("api_key", api_key),
        ("api_version", api_version),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            params.insert(name.into(), Value::String(value));
        }
    }
    if let Some(tokens) = max_tokens {
        params.insert("max_tokens".into(), Value::from(tokens));
    }
    params
}

impl GrpcManagement {
    /// Sets `budget_reset_at_unix_ms` of `message`'s budget from the scope's window.
    async fn with_reset(
        &self,
        budget: &mut Option<pb::BudgetLimits>,
        scope: &str,
        scope_id: &str,
    ) -> Result<(), ApiError> {
        if let Some(budget) = budget {
            budget.budget_reset_at_unix_ms = self
                .manager
                .budget_reset_at(scope, scope_id)
                .await?
                .map_or(0, ms);
        }
        Ok(())
    }

    async fn key_info(&self, key: &KeyRow) -> Result<pb::KeyInfo, ApiError> {
        let mut message = key_message(key);
        self.with_reset(&mut message.budget, "key", &key.token)
            .await?;
        Ok(message)
    }

    async fn key_infos(&self, keys: &[KeyRow]) -> Result<Vec<pb::KeyInfo>, ApiError> {
        let mut messages = Vec::with_capacity(keys.len());
        for key in keys {
            messages.push(self.key_info(key).await?);
        }
        Ok(messages)
    }

    async fn user_info(&self, user: &UserRow, teams: Vec<String>) -> Result<pb::User, ApiError> {
        let mut message = user_message(user, teams);
        self.with_reset(&mut message.budget, "user", &user.user_id)
            .await?;
        Ok(message)
    }

    async fn team_info(&self, team: &TeamRow) -> Result<pb::Team, ApiError> {
        let mut message = team_message(team);
        self.with_reset(&mut message.budget, "team", &team.team_id)
            .await?;
        Ok(message)
    }

    async fn auth<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let credential = header.map(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .unwrap_or(value)
        });
        self.manager
            .authorize(credential)
            .await
            .map_err(Status::from)
    }
}

type GrpcResult<T> = Result<Response<T>, Status>;

/// A unix ms bound of a spend query: 0 is none.
fn bound(value: u64) -> Option<i64> {
    (value > 0).then(|| i64::try_from(value).unwrap_or(i64::MAX))
}

/// A range of a spend query; an end at or before the start is refused (as over HTTP).
fn spend_range(
    start: u64,
    end: u64,
    end_param: &str,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let (start, end) = (bound(start), bound(end));
    if let (Some(start), Some(end)) = (start, end) {
        if end <= start {
            return Err(ApiError::invalid(end_param, "must be after the start"));
        }
    }
    Ok((start, end))
}

/// A key of a spend query: a clear key (hashed) or its SHA-256 hex, as `/spend/logs` takes it.
fn key_hash_of(api_key: String) -> Option<String> {
    opt(api_key.trim().to_string()).map(|key| token_of(&key))
}

fn spend_log_filter(filter: pb::SpendLogFilter) -> Result<SpendLogFilter, ApiError> {
    let (start_ms, end_ms) = spend_range(
        filter.start_unix_ms,
        filter.end_unix_ms,
        "filter.end_unix_ms",
    )?;
    let text = |value: String| opt(value.trim().to_string());
    Ok(SpendLogFilter {
        key_hash: key_hash_of(filter.api_key),
        user_id: text(filter.user_id),
        team_id: text(filter.team_id),
        model: text(filter.model),
        end_user: text(filter.end_user),
        request_id: text(filter.request_id),
        start_ms,
        end_ms,
    })
}

fn report_group(value: i32) -> Result<ReportGroup, ApiError> {
    Ok(match pb::SpendReportGroup::try_from(value) {
        Ok(pb::SpendReportGroup::Unspecified | pb::SpendReportGroup::Team) => ReportGroup::Team,
        Ok(pb::SpendReportGroup::Customer) => ReportGroup::Customer,
        Ok(pb::SpendReportGroup::ApiKey) => ReportGroup::ApiKey,
        Ok(pb::SpendReportGroup::User) => ReportGroup::User,
        Ok(pb::SpendReportGroup::Model) => ReportGroup::Model,
        Ok(pb::SpendReportGroup::Day) => ReportGroup::Day,
        Err(_) => {
            return Err(ApiError::invalid(
                "group_by",
                format!("{value} is not a SpendReportGroup"),
            ))
        }
    })
}

#[tonic::async_trait]
impl Management for GrpcManagement {
    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> GrpcResult<pb::ListModelsResponse> {
        self.auth(&request).await?;
        let models = self.manager.list_models().await?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models.iter().map(model_message).collect(),
        }))
    }

    async fn get_model(&self, request: Request<pb::GetModelRequest>) -> GrpcResult<pb::Model> {
        self.auth(&request).await?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(ApiError::invalid("id", "required").into());
        }
        Ok(Response::new(model_message(
            &self.manager.get_model(&id).await?,
        )))
    }

    async fn create_model(
        &self,
        request: Request<pb::CreateModelRequest>,
    ) -> GrpcResult<pb::Model> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let mut info = match json_field("model_info_json", &body.model_info_json)? {
            None => serde_json::Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => {
                return Err(ApiError::invalid("model_info_json", "must be a JSON object").into())
            }
        };
        if !body.id.is_empty() {
            info.insert("id".into(), Value::String(body.id));
        }
        let mut entry = serde_json::Map::new();
        if !body.model_name.is_empty() {
            entry.insert("model_name".into(), Value::String(body.model_name));
        }
        let mut params = litellm_params(
            Some(body.model),
            Some(body.api_base),
            Some(body.api_key),
            Some(body.api_version),
            body.max_tokens,
        );
        if let Some(pricing) = &body.pricing {
            insert_prices(&mut params, pricing);
        }
        if let Some(limits) = &body.limits {
            insert_limits(&mut params, limits);
        }
        entry.insert("litellm_params".into(), Value::Object(params));
        entry.insert("model_info".into(), Value::Object(info));
        let created = self.manager.create_model(&Value::Object(entry)).await?;
        Ok(Response::new(model_message(&created)))
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> GrpcResult<pb::Model> {
        self.auth(&request).await?;
        let body = request.into_inner();
        if body.id.is_empty() {
            return Err(ApiError::invalid("id", "required").into());
        }
        let mut patch = serde_json::Map::new();
        if let Some(name) = body.model_name {
            patch.insert("model_name".into(), Value::String(name));
        }
        let mut params = litellm_params(
            body.model,
            body.api_base,
            body.api_key,
            body.api_version,
            body.max_tokens,
        );
        if let Some(pricing) = &body.pricing {
            insert_prices(&mut params, pricing);
        }
        if let Some(limits) = &body.limits {
            insert_limits(&mut params, limits);
        }
        patch.insert("litellm_params".into(), Value::Object(params));
        if let Some(text) = body.model_info_json {
            if let Some(info) = json_field("model_info_json", &text)? {
                patch.insert("model_info".into(), info);
            }
        }
        let updated = self
            .manager
            .update_model(&body.id, &Value::Object(patch))
            .await?;
        Ok(Response::new(model_message(&updated)))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> GrpcResult<pb::DeleteModelResponse> {
        self.auth(&request).await?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(ApiError::invalid("id", "required").into());
        }
        self.manager.delete_model(&id).await?;
        Ok(Response::new(pb::DeleteModelResponse { id }))
    }

    async fn generate_key(
        &self,
        request: Request<pb::GenerateKeyRequest>,
    ) -> GrpcResult<pb::GeneratedKey> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let (key, row) = self
            .manager
            .generate_key(KeyGenerate {
                key_alias: opt(body.key_alias),
                user_id: opt(body.user_id),
                team_id: opt(body.team_id),
                models: body.models,
                duration: opt(body.duration),
                metadata: json_field("metadata_json", &body.metadata_json)?,
                key: opt(body.key),
                blocked: body.blocked,
                budget: budget_change(body.budget),
                model_max_budget: Some(model_budgets(body.model_max_budget)),
                limits: limits_change(body.limits),
                model_rpm_limit: Some(sorted_limits(body.model_rpm_limit)),
                model_tpm_limit: Some(sorted_limits(body.model_tpm_limit)),
            })
            .await?;
        Ok(Response::new(pb::GeneratedKey {
            key,
            info: Some(self.key_info(&row).await?),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> GrpcResult<pb::ListKeysResponse> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let keys = self
            .manager
            .list_keys(
                opt(body.user_id).as_deref(),
                opt(body.team_id).as_deref(),
                opt(body.key_alias).as_deref(),
            )
            .await?;
        let (page, size) = (
            body.page.max(1),
            if body.size == 0 { 10 } else { body.size },
        );
        let total = keys.len();
        let size_usize = usize::try_from(size).unwrap_or(10);
        let start = usize::try_from(page - 1)
            .unwrap_or(0)
            .saturating_mul(size_usize);
        let total_pages = u32::try_from(total.div_ceil(size_usize)).unwrap_or(u32::MAX);
        let page_keys: Vec<KeyRow> = keys.iter().skip(start).take(size_usize).cloned().collect();
        Ok(Response::new(pb::ListKeysResponse {
            keys: self.key_infos(&page_keys).await?,
            total_count: u64::try_from(total).unwrap_or(u64::MAX),
            current_page: page,
            total_pages,
        }))
    }

    async fn get_key(&self, request: Request<pb::KeyRef>) -> GrpcResult<pb::KeyInfo> {
        self.auth(&request).await?;
        let key = request.into_inner().key;
        let row = self.manager.key_info(&key).await?;
        Ok(Response::new(self.key_info(&row).await?))
    }

    async fn update_key(&self, request: Request<pb::UpdateKeyRequest>) -> GrpcResult<pb::KeyInfo> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let metadata = match body.metadata_json {
            Some(text) => Some(json_field("metadata_json", &text)?.unwrap_or(Value::Null)),
            None => None,
        };
        let row = self
            .manager
            .update_key(KeyUpdate {
                key: body.key,
                key_alias: body.key_alias.map(opt),
                user_id: body.user_id.map(opt),
                team_id: body.team_id.map(opt),
                models: body.models.map(|list| list.values),
                duration: body.duration.map(opt),
                metadata,
                blocked: body.blocked,
                budget: budget_change(body.budget),
                model_max_budget: body
                    .model_max_budget
                    .map(|budgets| Some(model_budgets(budgets.budgets))),
                limits: limits_change(body.limits),
                model_rpm_limit: body
                    .model_rpm_limit
                    .map(|limits| Some(sorted_limits(limits.limits))),
                model_tpm_limit: body
                    .model_tpm_limit
                    .map(|limits| Some(sorted_limits(limits.limits))),
            })
            .await?;
        Ok(Response::new(self.key_info(&row).await?))
    }

    async fn regenerate_key(
        &self,
        request: Request<pb::RegenerateKeyRequest>,
    ) -> GrpcResult<pb::GeneratedKey> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let (key, row) = self
            .manager
            .regenerate_key(&body.key, opt(body.new_key))
            .await?;
        Ok(Response::new(pb::GeneratedKey {
            key,
            info: Some(self.key_info(&row).await?),
        }))
    }

    async fn block_key(&self, request: Request<pb::KeyRef>) -> GrpcResult<pb::KeyInfo> {
        self.auth(&request).await?;
        let key = request.into_inner().key;
        let row = self.manager.set_blocked(&key, true).await?;
        Ok(Response::new(self.key_info(&row).await?))
    }

    async fn unblock_key(&self, request: Request<pb::KeyRef>) -> GrpcResult<pb::KeyInfo> {
        self.auth(&request).await?;
        let key = request.into_inner().key;
        let row = self.manager.set_blocked(&key, false).await?;
        Ok(Response::new(self.key_info(&row).await?))
    }

    async fn delete_keys(
        &self,
        request: Request<pb::DeleteKeysRequest>,
    ) -> GrpcResult<pb::DeleteKeysResponse> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let deleted_keys = self
            .manager
            .delete_keys(&body.keys, &body.key_aliases)
            .await?;
        Ok(Response::new(pb::DeleteKeysResponse { deleted_keys }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> GrpcResult<pb::CreateUserResponse> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let (user, key) = self
            .manager
            .create_user(UserCreate {
                user_id: opt(body.user_id),
                user_email: opt(body.user_email),
                user_role: opt(body.user_role),
                models: body.models,
                metadata: json_field("metadata_json", &body.metadata_json)?,
                auto_create_key: !body.no_key,
                key_alias: opt(body.key_alias),
                duration: opt(body.duration),
                budget: budget_change(body.budget),
                limits: limits_change(body.limits),
            })
            .await?;
        let key = match key {
            Some((key, row)) => Some(pb::GeneratedKey {
                key,
                info: Some(self.key_info(&row).await?),
            }),
            None => None,
        };
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(self.user_info(&user, Vec::new()).await?),
            key,
        }))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> GrpcResult<pb::UserInfo> {
        self.auth(&request).await?;
        let details = self
            .manager
            .user_info(&request.into_inner().user_id)
            .await?;
        Ok(Response::new(pb::UserInfo {
            user: Some(self.user_info(&details.user, details.teams).await?),
            keys: self.key_infos(&details.keys).await?,
        }))
    }

    async fn update_user(&self, request: Request<pb::UpdateUserRequest>) -> GrpcResult<pb::User> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let metadata = match body.metadata_json {
            Some(text) => Some(json_field("metadata_json", &text)?.unwrap_or(Value::Null)),
            None => None,
        };
        let user = self
            .manager
            .update_user(UserUpdate {
                user_id: body.user_id,
                user_email: body.user_email.map(opt),
                user_role: body.user_role,
                models: body.models.map(|list| list.values),
                metadata,
                budget: budget_change(body.budget),
                limits: limits_change(body.limits),
            })
            .await?;
        let teams = self.manager.user_info(&user.user_id).await?.teams;
        Ok(Response::new(self.user_info(&user, teams).await?))
    }

    async fn update_team(&self, request: Request<pb::UpdateTeamRequest>) -> GrpcResult<pb::Team> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let metadata = match body.metadata_json {
            Some(text) => Some(json_field("metadata_json", &text)?.unwrap_or(Value::Null)),
            None => None,
        };
        let team = self
            .manager
            .update_team(TeamUpdate {
                team_id: body.team_id,
                team_alias: body.team_alias.map(opt),
                models: body.models.map(|list| list.values),
                metadata,
                blocked: body.blocked,
                budget: budget_change(body.budget),
                limits: limits_change(body.limits),
            })
            .await?;
        Ok(Response::new(self.team_info(&team).await?))
    }

    async fn create_team(&self, request: Request<pb::CreateTeamRequest>) -> GrpcResult<pb::Team> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let team = self
            .manager
            .create_team(TeamCreate {
                team_id: opt(body.team_id),
                team_alias: opt(body.team_alias),
                models: body.models,
                metadata: json_field("metadata_json", &body.metadata_json)?,
                members: members(body.members),
                budget: budget_change(body.budget),
                limits: limits_change(body.limits),
            })
            .await?;
        Ok(Response::new(self.team_info(&team).await?))
    }

    async fn get_team(&self, request: Request<pb::GetTeamRequest>) -> GrpcResult<pb::TeamInfo> {
        self.auth(&request).await?;
        let (team, keys) = self
            .manager
            .team_info(&request.into_inner().team_id)
            .await?;
        Ok(Response::new(pb::TeamInfo {
            team: Some(self.team_info(&team).await?),
            keys: self.key_infos(&keys).await?,
        }))
    }

    async fn add_team_member(
        &self,
        request: Request<pb::AddTeamMemberRequest>,
    ) -> GrpcResult<pb::Team> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let team = self
            .manager
            .add_team_members(&body.team_id, &members(body.members))
            .await?;
        Ok(Response::new(self.team_info(&team).await?))
    }

    async fn list_spend_logs(
        &self,
        request: Request<pb::ListSpendLogsRequest>,
    ) -> GrpcResult<pb::ListSpendLogsResponse> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let filter = spend_log_filter(body.filter.unwrap_or_default())?;
        let page = body.page.max(1);
        let page_size = match body.page_size {
            0 => 50,
            size if size <= MAX_PAGE_SIZE => size,
            size => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!("must be an integer from 1 to {MAX_PAGE_SIZE}, got {size}"),
                )
                .into())
            }
        };
        let store = self.manager.hub().store();
        let offset = (page - 1).saturating_mul(page_size);
        let records = store
            .spend_logs(&filter, offset, page_size)
            .await
            .map_err(ApiError::from)?;
        let total = store
            .spend_logs_count(&filter)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListSpendLogsResponse {
            records,
            total,
            page,
            page_size,
            total_pages: total.div_ceil(page_size),
        }))
    }

    async fn get_global_spend(
        &self,
        request: Request<pb::GetGlobalSpendRequest>,
    ) -> GrpcResult<pb::GlobalSpend> {
        self.auth(&request).await?;
        let (spend, reset_at) = self
            .manager
            .hub()
            .store()
            .spend_total(SpendScope::Global, "")
            .await
            .map_err(ApiError::from)?
            .unwrap_or((0.0, 0));
        Ok(Response::new(pb::GlobalSpend {
            spend,
            budget_reset_at_unix_ms: reset_at,
        }))
    }

    async fn get_spend_report(
        &self,
        request: Request<pb::GetSpendReportRequest>,
    ) -> GrpcResult<pb::SpendReport> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let (start, end) = spend_range(body.start_unix_ms, body.end_unix_ms, "end_unix_ms")?;
        let start = start.ok_or_else(|| ApiError::invalid("start_unix_ms", "required"))?;
        let end = end.ok_or_else(|| ApiError::invalid("end_unix_ms", "required"))?;
        let group = report_group(body.group_by)?;
        let restrict = ReportFilter {
            key_hash: key_hash_of(body.api_key),
            user_id: opt(body.internal_user_id.trim().to_string()),
        };
        let store = self.manager.hub().store();
        let rows = store
            .spend_report(start, end, group, &restrict)
            .await
            .map_err(ApiError::from)?;
        let aliases = if group == ReportGroup::Team {
            store.team_aliases().await.map_err(ApiError::from)?
        } else {
            BTreeMap::new()
        };
        Ok(Response::new(pb::SpendReport {
            rows: rows
                .into_iter()
                .map(|row| pb::SpendReportRow {
                    day_unix_ms: row
                        .day
                        .and_then(|day| u64::try_from(day.saturating_mul(DAY_MS)).ok()),
                    team_alias: aliases.get(&row.team_id).cloned().unwrap_or_default(),
                    team_id: row.team_id,
                    end_user: row.end_user,
                    key_hash: row.key_hash,
                    user_id: row.user_id,
                    model: row.model,
                    spend: row.spend,
                    prompt_tokens: row.prompt_tokens,
                    completion_tokens: row.completion_tokens,
                    requests: row.requests,
                })
                .collect(),
        }))
    }

    async fn list_spend_tags(
        &self,
        request: Request<pb::ListSpendTagsRequest>,
    ) -> GrpcResult<pb::ListSpendTagsResponse> {
        self.auth(&request).await?;
        let body = request.into_inner();
        let (start, end) = spend_range(body.start_unix_ms, body.end_unix_ms, "end_unix_ms")?;
        let tags = self
            .manager
            .hub()
            .store()
            .spend_by_tag(start, end)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListSpendTagsResponse {
            tags: tags
                .into_iter()
                .map(|tag| pb::TagSpend {
                    tag: tag.tag,
                    log_count: tag.log_count,
                    total_spend: tag.total_spend,
                })
                .collect(),
        }))
    }
}
