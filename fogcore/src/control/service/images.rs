//! Image records: placement on nodes, and each node's copy.

use super::{Control, same_name};
use crate::control::api::Caller;
use crate::control::model::{CopyReport, Image, ImageCopy, ImageQuery, Page, Placement, TaskFilter, page_limit};
use crate::error::{Error, Result};

impl Control {
    /// Every image record, by name.
    pub async fn images(&self) -> Result<Vec<Image>> {
        self.db.images().await
    }

    /// A page of image records, by name.
    pub async fn image_page(&self, query: &ImageQuery) -> Result<Page<Image>> {
        let limit = page_limit(query.limit)?;
        let images = self.db.images_page(query, limit).await?;
        Ok(Page::of(images, limit, |i| i.name.clone()))
    }

    /// One image record.
    pub async fn image(&self, name: &str) -> Result<Image> {
        self.db.image(name).await
    }

    /// Each node's copy of an image.
    pub async fn image_copies(&self, name: &str) -> Result<Vec<ImageCopy>> {
        self.db.image(name).await?;
        self.db.image_copies(name).await
    }

    /// A node reports where its copy of an image stands (a node only for itself).
    pub async fn set_copy_state(&self, caller: &Caller, image: &str, node: &str, report: &CopyReport) -> Result<()> {
        caller.check_node(node)?;
        self.db.set_copy_state(report, image, node).await
    }

    /// A manifest became an image in the master's store: every node's copy is stale now.
    pub async fn manifest_stored(&self, image: &str) -> Result<()> {
        self.db.mark_copies_stale(image).await
    }

    pub(super) async fn check_placement(&self, image: &Image) -> Result<()> {
        image.validate()?;
        if let Placement::Nodes { nodes } = &image.placement {
            for node in nodes {
                self.db.node(node).await?;
            }
        }
        Ok(())
    }

    /// Adds an image's record; its placement names existing nodes.
    pub async fn create_image(&self, image: &Image) -> Result<Image> {
        self.check_placement(image).await?;
        self.db.create_image(image).await?;
        self.db.image(&image.name).await
    }

    /// Replaces an image's record.
    pub async fn update_image(&self, name: &str, image: &Image) -> Result<Image> {
        same_name("image name", name, &image.name)?;
        self.check_placement(image).await?;
        self.db.update_image(image).await?;
        self.db.image(name).await
    }

    /// Removes an image's record; refused while a host or an open task uses it.
    pub async fn delete_image(&self, name: &str) -> Result<()> {
        self.db.image(name).await?;
        if self.db.image_in_use(name).await? {
            return Err(Error::conflict("image", name, "a host or an open task uses it"));
        }
        self.db.delete_image(name).await
    }

    /// Refused unless `caller` may read `image` from the master's store: an admin reads every
    /// image; a node those placed on it and those an open task of its hosts uses (a deploy it
    /// passes chunks through for, a capture that replaces an older copy). Chunks are read by
    /// their BLAKE3 ids, which only a manifest (or the data itself) gives: the manifest is the
    /// gate.
    pub async fn check_image_read(&self, caller: &Caller, image: &str) -> Result<()> {
        let Some(node) = caller.node() else {
            return Ok(());
        };
        if self.images_readable_by(node).await?.iter().any(|i| i == image) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "node {node} cannot read image {image}: it is not placed on {node} and no open task of {node} uses it"
        )))
    }

    /// Of `images`, those `caller` may read (see [`Control::check_image_read`]).
    pub async fn readable_images(&self, caller: &Caller, images: Vec<String>) -> Result<Vec<String>> {
        let Some(node) = caller.node() else {
            return Ok(images);
        };
        let readable = self.images_readable_by(node).await?;
        Ok(images.into_iter().filter(|i| readable.contains(i)).collect())
    }

    async fn images_readable_by(&self, node: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.db.node_copies(node).await?.into_iter().map(|c| c.image).collect();
        let open = TaskFilter {
            node: Some(node.to_string()),
            open_only: true,
            ..TaskFilter::default()
        };
        names.extend(self.db.tasks(&open).await?.into_iter().filter_map(|t| t.image));
        Ok(names)
    }
}
