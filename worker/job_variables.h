#pragma once

/// @file
/// @brief From a pool's base job template and a run's job variables to a job configuration,
/// with Prefect's precedence rules (contract section 5.2, steps 1 to 6 and 8).
///
/// The worker calls, in order: `mergeJobVariables`, `renderJobConfiguration`, then
/// `templating::collectReferences` / `templating::resolveReferences`, then
/// `coerceBaseConfiguration`. Each step is pure, so each rule is tested on its own.

#include <string_view>

#include <poolworker/json.h>
#include <poolworker/result.h>

#include "worker/templating.h"

namespace poolworker::jobvars {

/// @brief Step 1: merges the deployment's and the flow run's job variables, flow run winning.
///
/// Starts from a shallow copy of `deployment_vars`. When its `env` is an object, the flow run's
/// `env` object is merged into it key by key; every other key of the flow run replaces the
/// deployment's whole. When the deployment has no `env` object, the flow run's `env` replaces it
/// like any other key. (A flow-run `env` that is not an object, while the deployment has an env
/// object, is ignored; Prefect raises a TypeError there, but the server's schema validation
/// rejects such job variables first.)
/// @param deployment_vars The deployment's `job_variables`; anything but an object counts as `{}`.
/// @param flow_run_vars The flow run's `job_variables`; anything but an object counts as `{}`.
/// @return The merged job variables, an object.
Json mergeJobVariables(const Json& deployment_vars, const Json& flow_run_vars);

/// @brief Step 2: the defaults of the template's variables.
///
/// For each `properties[k]` with a `default` key whose value is not null, the result has
/// `k: default`. Properties without a default, with a null default, or whose schema is not an
/// object are left out.
/// @param variables_schema The template's `variables` object (a JSON schema).
/// @return The defaults, an object in the order of `properties`.
Json variableDefaults(const Json& variables_schema);

/// @brief Prefect's `deep_merge`: `overlay` merged into `base`, recursively where both sides
/// are objects, `overlay` winning otherwise. Key order: `base`'s keys, then new keys.
/// @param base The object merged into.
/// @param overlay The object merged from.
/// @return The merged object (`overlay` when either side is not an object).
Json deepMerge(const Json& base, const Json& overlay);

/// @brief Step 4 without the final update: expands job-variable keys that contain `.` into
/// nesting (`"env.FOO": "x"` → `{"env": {"FOO": "x"}}`, `[` counting as `.` and `]` dropped),
/// then lays the plain keys on top (deep-merged when both sides are objects).
/// @param job_variables The merged job variables, an object.
/// @return The expanded variables, or an InvalidConfiguration error when a dotted key goes
/// through a value that is not an object.
Result<Json> expandDottedKeys(const Json& job_variables);

/// @brief Steps 3 to 6: applies job variables to a pool's base job template.
///
/// The template's `variables` defaults are the starting values; the `env` default is merged
/// into `job_configuration.env` first (or replaces it when that is the `"{{ env }}"`
/// placeholder); dotted job-variable keys are expanded and the job variables laid over the
/// defaults; a hard-coded `job_configuration.env` object then receives the job variables' env
/// (so the net env is pool hard-coded ∪ pool default ∪ deployment ∪ flow run, later wins); and
/// finally `templating::applyValues` fills the placeholders.
/// @param base_job_template The pool's `base_job_template`, with `job_configuration` and
/// `variables` objects.
/// @param job_variables The merged job variables (`mergeJobVariables`).
/// @param env Where `{{ $NAME }}` placeholders are looked up.
/// @return The templated configuration, before block and variable resolution, or an
/// InvalidConfiguration error that names what is malformed.
Result<Json> renderJobConfiguration(
    const Json& base_job_template, const Json& job_variables,
    const templating::EnvLookup& env = templating::processEnvironment());

/// @brief Step 8 for the fields every worker type shares (Prefect's `BaseJobConfiguration`).
///
/// `command`: a string or null, an empty string becoming null, missing → null. `env`: an object
/// whose non-null values become Python `str()` of themselves (`1` → `"1"`, `true` → `"True"`),
/// missing → `{}`. `labels`: an object of strings, missing → `{}`. `name`: a string or null,
/// missing → null. Other keys are passed through untouched.
/// @param config A resolved job configuration.
/// @return The coerced configuration, or an InvalidConfiguration error naming the field.
Result<Json> coerceBaseConfiguration(Json config);

/// @brief A boolean the way a pydantic `bool` field reads it in lax mode: `true`/`false`,
/// the numbers 0 and 1, or (any case) `"true"`, `"false"`, `"1"`, `"0"`, `"yes"`, `"no"`,
/// `"on"`, `"off"`, `"t"`, `"f"`, `"y"`, `"n"`.
/// @param value The value.
/// @param field The field's name, for the error message.
/// @return The boolean, or an InvalidConfiguration error naming the field.
Result<bool> laxBool(const Json& value, std::string_view field);

}  // namespace poolworker::jobvars
