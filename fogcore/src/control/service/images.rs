//! Image records: placement on nodes, and each node's copy.

use super::{Control, same_name};
use crate::control::api::Caller;
use crate::control::model::{CopyReport, Image, ImageCopy, ImageQuery, Page, Placement, page_limit};
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
}
