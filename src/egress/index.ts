/**
 * The egress proxy: an HTTP forward proxy (CONNECT and absolute-URI
 * requests) that allows or denies every outbound connection of a sandbox by
 * its network policy, with optional L7 (method/path) rules, SSRF guards, and
 * raw passthrough after `101 Switching Protocols`.
 */
export { startEgressProxy } from './proxy.js';
export type { EgressProxy, EgressProxyOptions, EgressDecision } from './proxy.js';
export {
  PolicySchema,
  EndpointSchema,
  NetworkPolicySchema,
  PolicyError,
  parsePolicy,
  parsePolicyText,
} from './policy.js';
export type { Policy, PolicyEndpoint } from './policy.js';
