//! Schedules: tasks for a host or a group at a time or by a cron line, fired by the master's
//! ticker.

use super::Control;
use crate::control::cron::Cron;
use crate::control::model::{GroupTasks, Millis, Schedule, Skipped, When, check_name};
use crate::error::{Error, Result};

fn next_run(when: &When, now: Millis) -> Result<Option<Millis>> {
    Ok(match when {
        When::At(at) => Some(*at),
        When::Cron(line) => {
            // The document gives the line's shape; a field out of range is a rule beyond it.
            let cron = line.parse::<Cron>().map_err(|e| match e {
                Error::Invalid { field, value, reason } => Error::unprocessable(field, value, reason),
                other => other,
            })?;
            let next = cron.next_after(now);
            if next.is_none() {
                return Err(Error::unprocessable("cron line", line, "never matches"));
            }
            next
        }
    })
}

impl Control {
    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.db.schedules().await
    }

    /// Removes a schedule (its tasks stay).
    pub async fn delete_schedule(&self, id: i64) -> Result<()> {
        self.db.delete_schedule(id).await
    }

    /// Adds a schedule: a cron line that parses, a host or a group (not both) that exists.
    pub async fn create_schedule(&self, schedule: &Schedule) -> Result<Schedule> {
        let mut schedule = schedule.clone();
        match (&schedule.group, &schedule.task.host) {
            (Some(group), None) => {
                check_name("group name", group)?;
                self.db.group(group).await?;
            }
            (None, Some(host)) => {
                self.db.host(host).await?;
            }
            _ => {
                return Err(Error::unprocessable(
                    "schedule",
                    "",
                    "name either a host (task.host) or a group",
                ));
            }
        }
        schedule.task.check_layout()?;
        schedule.next_run = next_run(&schedule.when, self.clock.now())?;
        schedule.id = self.db.create_schedule(&schedule).await?;
        Ok(schedule)
    }

    /// Creates the tasks of every schedule due at `now`; moves cron schedules to their next time
    /// and retires one-offs. Returns the tasks created and the hosts skipped.
    pub async fn run_schedules(&self, now: Millis) -> Result<GroupTasks> {
        let mut report = GroupTasks {
            created: Vec::new(),
            skipped: Vec::new(),
        };
        for schedule in self.db.schedules().await? {
            let Some(due) = schedule.next_run else { continue };
            if due > now {
                continue;
            }
            let next = match &schedule.when {
                When::At(_) => None,
                When::Cron(line) => line.parse::<Cron>()?.next_after(now),
            };
            self.db.set_next_run(schedule.id, next).await?;
            if let Some(group) = &schedule.group {
                let r = self
                    .create_group_task_from(group, &schedule.task, Some(schedule.id))
                    .await?;
                report.created.extend(r.created);
                report.skipped.extend(r.skipped);
            } else if let Some(host_name) = &schedule.task.host {
                let result = match self.db.host(host_name).await {
                    Ok(host) => self.task_for_host(&schedule.task, &host, None, Some(schedule.id)).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(task) => report.created.push(task),
                    Err(e) if e.is_bad_input() => report.skipped.push(Skipped {
                        host: host_name.clone(),
                        reason: e.to_string(),
                    }),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }
}
