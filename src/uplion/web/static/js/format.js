// Reading form fields and writing figures for people: limits, quotas, dates, numbers.

/** A whole number from a form field, or null when it is empty. */
export function count(value) {
  const number = Number.parseInt(String(value ?? "").trim(), 10);
  return Number.isFinite(number) ? number : null;
}

/** A list of model names from "a, b", or null (no restriction) when it is empty. */
export function names(value) {
  const found = String(value ?? "").split(",").map((name) => name.trim()).filter(Boolean);
  return found.length ? found : null;
}

export function limitsText(limits) {
  const parts = [];
  if (limits?.requests_per_minute) parts.push(`${limits.requests_per_minute} req/min`);
  if (limits?.tokens_per_minute) parts.push(`${number(limits.tokens_per_minute)} tokens/min`);
  return parts.length ? parts.join(", ") : "unlimited";
}

export function quotaText(quota) {
  return quota ? `${number(quota.tokens)} tokens per ${quota.period}` : "none";
}

export function modelsText(models) {
  return models ? models.join(", ") : "all";
}

export function when(iso) {
  if (!iso) return "never";
  return new Date(iso).toLocaleString("en-GB", {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
}

export function number(value) {
  return Number(value).toLocaleString("en");
}

/** The limits, quota and allow-list of a form, in the admin API's shape. */
export function limitsOf(data) {
  const quota = count(data.get("quota"));
  return {
    limits: { requests_per_minute: count(data.get("rpm")), tokens_per_minute: count(data.get("tpm")) },
    quota: quota === null ? null : { tokens: quota, period: data.get("period") },
    allowed_models: names(data.get("models")),
  };
}
