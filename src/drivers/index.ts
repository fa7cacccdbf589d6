import { join } from 'node:path';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { ProcessDriver } from './process.js';
import type { ComputeDriver } from './types.js';

/** The compute driver `--driver` names. Drivers load their client library only when chosen. */
export async function createDriver(config: Config, log: Logger): Promise<ComputeDriver> {
  switch (config.driver) {
    case 'process':
      return new ProcessDriver({
        stateDir: config.stateDir,
        log,
        warmPool: config.warmSupervisors,
        isolation: config.isolation,
        // Supervisors dial back over TLS; a self-signed gateway cert must be trusted by them.
        supervisorEnv: config.tlsCert ? { NODE_EXTRA_CA_CERTS: config.tlsCert } : {},
      });
    case 'docker': {
      const { DockerDriver } = await import('./docker.js');
      return new DockerDriver({
        log,
        dockerHost: config.dockerHost,
        network: config.dockerNetwork,
        defaultImage: config.defaultImage,
        stateDir: config.stateDir,
        isolation: config.isolation,
        socketDir: () => join(config.stateDir, 'run'),
      });
    }
    case 'kubernetes': {
      const { KubernetesDriver } = await import('./kubernetes.js');
      return new KubernetesDriver({
        log,
        namespace: config.k8sNamespace,
        kubeconfig: config.kubeconfig,
        supervisorImage: config.supervisorImage,
        defaultImage: config.defaultImage,
        startTimeoutMs: config.k8sStartTimeoutMs,
        isolation: config.isolation,
      });
    }
    default:
      throw new Error(`--driver ${config.driver}: not available in this build yet (use --driver process)`);
  }
}
