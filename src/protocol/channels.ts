/**
 * Channel bytes of the interactive exec WebSocket (`GET /v1/sandboxes/:name/exec`),
 * the Kubernetes `channel.k8s.io` convention: every frame starts with one.
 */
export const ExecChannel = { stdin: 0, stdout: 1, stderr: 2, status: 3, resize: 4 } as const;
