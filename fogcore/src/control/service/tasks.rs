//! Tasks: creating them (one host, a group), listing, history, cancelling.

use super::Control;
use super::checkin::{Change, raced};
use crate::control::model::{
    GroupTasks, HistoryQuery, Host, NewTask, Page, Skipped, Task, TaskEvent, TaskFilter, TaskId, check_not_negative,
    page_limit,
};
use crate::control::tasks::{Event, step};
use crate::error::{Error, Result};
use crate::names::check_name;

impl Control {
    /// Creates a task for one host. Deploy and multicast take the host's image and layout when
    /// none is given.
    pub async fn create_task(&self, new: &NewTask) -> Result<Task> {
        let host_name = new
            .host
            .as_deref()
            .ok_or_else(|| Error::unprocessable("host", "", "a task needs a host (or use a group)"))?;
        let host = self.db.host(host_name).await?;
        self.task_for_host(new, &host, None, None).await
    }

    pub(super) async fn task_for_host(
        &self,
        new: &NewTask,
        host: &Host,
        group: Option<&str>,
        schedule: Option<i64>,
    ) -> Result<Task> {
        new.check_layout()?;
        let mut new = new.clone();
        new.host = Some(host.name.clone());
        if new.kind.deploys() && new.image.is_none() {
            new.image = host.image.clone();
        }
        new.layout = new.layout_for(host);
        if new.kind.needs_image() {
            let image = new.image.as_deref().ok_or_else(|| {
                Error::unprocessable(
                    "image",
                    "",
                    format!(
                        "a {} task needs an image (host {} has none set)",
                        new.kind.as_str(),
                        host.name
                    ),
                )
            })?;
            self.db.image(image).await?;
        } else if new.image.is_some() {
            return Err(Error::unprocessable(
                "image",
                new.image.clone().unwrap_or_default(),
                format!("a {} task takes no image", new.kind.as_str()),
            ));
        }
        if let Some(task) = self.db.open_task_for_host(&host.name).await? {
            return Err(Error::conflict(
                "host",
                &host.name,
                format!("task {} ({}) is not over", task.id, task.state.name()),
            ));
        }
        let node = self.node_for(host, None).await?;
        if new.wake {
            super::nodes::waking_node(host, node.as_deref())?;
        }
        let task = self
            .db
            .insert_task(&new, &host.name, node.as_deref(), group, schedule)
            .await?;
        if let (true, Some(node)) = (task.wake, &node) {
            self.request_wake(host, node, Some(task.id)).await?;
        }
        Ok(task)
    }

    /// Creates one task per host of the group; hosts that cannot take one are listed with why.
    pub async fn create_group_task(&self, group: &str, new: &NewTask) -> Result<GroupTasks> {
        self.create_group_task_from(group, new, None).await
    }

    pub(super) async fn create_group_task_from(
        &self,
        group: &str,
        new: &NewTask,
        schedule: Option<i64>,
    ) -> Result<GroupTasks> {
        self.db.group(group).await?;
        if new.host.is_some() {
            return Err(Error::unprocessable(
                "host",
                new.host.clone().unwrap_or_default(),
                "a group task names no host",
            ));
        }
        new.check_layout()?;
        // Checked once here, not per host: a group of none would accept any name. A 404 would
        // read as "no such group": the body names a record that is not there, a 422.
        if let Some(image) = &new.image {
            check_name("image name", image)?;
            self.db.image(image).await.map_err(|e| match e {
                Error::NotFound { .. } => Error::unprocessable("image", image, "no image of that name"),
                other => other,
            })?;
        }
        let mut report = GroupTasks {
            created: Vec::new(),
            skipped: Vec::new(),
        };
        for host in self.db.hosts_in_group(group).await? {
            match self.task_for_host(new, &host, Some(group), schedule).await {
                Ok(task) => report.created.push(task),
                Err(e) if e.is_bad_input() => report.skipped.push(Skipped {
                    host: host.name.clone(),
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Tasks matching a filter (state names checked).
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        filter.validate()?;
        let mut tasks = self.db.tasks(filter).await?;
        self.line.lock().await.overlay(&mut tasks);
        Ok(tasks)
    }

    /// A page of the tasks `filter` selects, newest first (at most [`PAGE_MAX`](crate::control::model::PAGE_MAX)).
    pub async fn task_page(&self, filter: &TaskFilter) -> Result<Page<Task>> {
        let limit = page_limit(filter.limit)?;
        let tasks = self
            .tasks(&TaskFilter {
                limit: Some(limit + 1),
                ..filter.clone()
            })
            .await?;
        Ok(Page::of(tasks, limit, |t| t.id.to_string()))
    }

    /// One task (progress as last reported, which may not be written yet).
    pub async fn task(&self, id: TaskId) -> Result<Task> {
        if let Some(held) = self.line.lock().await.get(id) {
            return Ok(held.task.clone());
        }
        self.db.task(id).await
    }

    /// A page of a task's state changes, oldest first.
    pub async fn task_history(&self, id: TaskId, query: &HistoryQuery) -> Result<Page<TaskEvent>> {
        self.db.task(id).await?;
        check_not_negative("after", query.after)?;
        let limit = page_limit(query.limit)?;
        let events = self.db.task_events(id, query.after.unwrap_or(0), limit + 1).await?;
        Ok(Page::of(events, limit, |e| e.id.to_string()))
    }

    /// Cancels a task that is not over; frees its slot.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        let mut lines = self.line.lock().await;
        for _ in 0..2 {
            let (task, contact) = self.current_task(&mut lines, id).await?;
            let next = step(id, &task.state, Event::Cancel)?;
            let change = Change::new(
                &task,
                next,
                contact,
                self.clock.now(),
                Some("cancelled by an admin".into()),
            );
            if let Some(task) = self.commit_one(&mut lines, change).await? {
                return Ok(task);
            }
        }
        Err(raced(id))
    }
}
