import { OpenShellError, invalidArgument } from '../errors.js';
import { PolicyError, parsePolicy } from '../egress/index.js';
import type { PolicyAppliedMessage } from '../protocol/control.js';
import type { SupervisorSession } from '../relay/control.js';
import type { SessionRegistry } from '../relay/sessions.js';
import type { SandboxService } from './service.js';

const APPLY_TIMEOUT_MS = 10_000;

/** The egress policy engine's validation, as the API's 400 naming the field (`policy.<path>`). */
export function validatePolicy(policy: unknown): unknown {
  try {
    return parsePolicy(policy);
  } catch (err) {
    if (err instanceof PolicyError) {
      const field = err.field ? `policy.${err.field}` : 'policy';
      throw invalidArgument(field, err.message.replace(`${err.field}: `, ''));
    }
    throw err;
  }
}

/**
 * Live policy updates: the new policy is validated, pushed over the control
 * session, and stored once the supervisor has applied it, so the API answers
 * with the supervisor's verdict. Without a session it is stored and applied
 * at the next connect (the welcome carries it).
 */
export class PolicyService {
  readonly #sandboxes: SandboxService;
  readonly #sessions: SessionRegistry<SupervisorSession>;
  readonly #waiters = new Map<string, (msg: PolicyAppliedMessage) => void>();

  constructor(sandboxes: SandboxService, sessions: SessionRegistry<SupervisorSession>) {
    this.#sandboxes = sandboxes;
    this.#sessions = sessions;
  }

  async get(name: string): Promise<{ version: number; policy: unknown }> {
    const record = await this.#sandboxes.getRecord(name);
    return { version: record.policyVersion, policy: record.policy };
  }

  async set(name: string, policy: unknown): Promise<{ version: number; applied: boolean; policy: unknown }> {
    const validated = policy === null ? null : validatePolicy(policy);
    const record = await this.#sandboxes.getRecord(name);
    const version = record.policyVersion + 1;
    const session = this.#sessions.get(record.id);
    if (session) {
      const verdict = await this.#push(session, validated, version);
      if (!verdict.ok) {
        throw new OpenShellError('INVALID_ARGUMENT', `the sandbox rejected the policy: ${verdict.error ?? 'unknown error'}`, {
          details: { field: 'policy' },
        });
      }
    }
    const stored = await this.#sandboxes.setPolicy(record.id, validated, version);
    return { version: stored.policyVersion, applied: session !== undefined, policy: stored.policy };
  }

  onApplied(session: SupervisorSession, message: PolicyAppliedMessage): void {
    this.#waiters.get(`${session.sandboxId}:${message.version}`)?.(message);
  }

  #push(session: SupervisorSession, policy: unknown, version: number): Promise<PolicyAppliedMessage> {
    const key = `${session.sandboxId}:${version}`;
    return new Promise((resolve, reject) => {
      const done = (err: Error | null, msg?: PolicyAppliedMessage) => {
        clearTimeout(timer);
        this.#waiters.delete(key);
        session.signal.removeEventListener('abort', onEnd);
        if (err) reject(err);
        else resolve(msg as PolicyAppliedMessage);
      };
      const onEnd = () => done(new OpenShellError('SESSION_UNAVAILABLE', 'the supervisor session ended before it applied the policy'));
      const timer = setTimeout(
        () => done(new OpenShellError('SESSION_UNAVAILABLE', 'the supervisor did not acknowledge the policy in time')),
        APPLY_TIMEOUT_MS,
      );
      this.#waiters.set(key, (msg) => done(null, msg));
      session.signal.addEventListener('abort', onEnd, { once: true });
      if (!session.send({ type: 'policy', policy, version })) onEnd();
    });
  }
}
