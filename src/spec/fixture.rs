//! Test fixtures: a valid split that chains into variants.

use super::*;

impl TrafficSplit {
    /// The example: lambda (API Gateway) and fargate (ECS, 20 tasks at full traffic).
    pub fn test() -> Self {
        TrafficSplit {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: "api".into(),
                labels: Default::default(),
            },
            spec: SplitSpec {
                record: RecordSpec {
                    hosted_zone: "abceed.example.".into(),
                    name: "api.abceed.example.".into(),
                    record_type: RecordType::A,
                    ttl: 60,
                    adopt_existing: true,
                    plain_when_single: false,
                },
                backends: vec![
                    Backend {
                        name: "lambda".into(),
                        api_gateway: Some(ApiGatewayBackend {
                            domain_name: "api.abceed.example".into(),
                        }),
                        ecs: None,
                        target: None,
                        request_metric: None,
                    },
                    Backend {
                        name: "fargate".into(),
                        api_gateway: None,
                        ecs: Some(EcsBackend {
                            cluster: "prod".into(),
                            service: "api".into(),
                            tasks_at_full_traffic: 20,
                            min_tasks: 2,
                            max_tasks: Some(40),
                        }),
                        target: None,
                        request_metric: None,
                    },
                ],
                weights: [("lambda".to_string(), 0), ("fargate".to_string(), 100)].into(),
                rollout: None,
                gates: vec![],
                aws: None,
                observe: None,
            },
        }
    }

    pub fn with_weights(mut self, pairs: &[(&str, u32)]) -> Self {
        self.spec.weights = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        self
    }

    pub fn with_steps(mut self, steps: &[u32], interval_secs: u64) -> Self {
        self.spec.rollout = Some(Rollout {
            steps: Some(steps.to_vec()),
            step_percent: None,
            interval: HumanDuration(Duration::from_secs(interval_secs)),
            drain_delay: Some(HumanDuration(Duration::from_secs(120))),
            failure_threshold: 3,
            on_gate_failure: OnGateFailure::Rollback,
            paused: false,
            progress_deadline: HumanDuration(Duration::from_secs(600)),
            gate_interval: HumanDuration(Duration::from_secs(30)),
            windows: vec![],
            freeze: vec![],
        });
        self
    }

    pub fn with_rollout(mut self, f: impl FnOnce(&mut Rollout)) -> Self {
        f(self.spec.rollout.as_mut().expect("with_steps first"));
        self
    }

    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.spec.gates.push(gate);
        self
    }
}

impl Gate {
    pub fn ecs_stable(name: &str, backend: &str) -> Self {
        Gate {
            name: name.into(),
            cloudwatch_alarm: None,
            ecs_stable: Some(BackendRef {
                backend: backend.into(),
            }),
            target_health: None,
            prometheus: None,
            http: None,
            traffic_share: None,
        }
    }
}
